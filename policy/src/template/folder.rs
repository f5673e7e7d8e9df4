//! Which chat template a Hugging Face tokenizer folder holds, read as transformers 5 reads it.
//!
//! Source: transformers 5.24 `tokenization_utils_base.py`: `from_pretrained` /
//! `_from_pretrained` (`chat_template.jinja` is the template named `default`, every
//! `additional_chat_templates/<name>.jinja` the template `<name>`; when any such file exists the
//! files replace `tokenizer_config.json`'s `chat_template`; a single `default` stays a plain
//! template), `__init__` (`chat_template` in `tokenizer_config.json`: a string, or the older
//! list of `{name, template}`), `save_chat_templates` (transformers 5 writes these files) and
//! `get_chat_template` (with several templates and no name asked for, `default`; none named
//! `default` is an error).

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::tokenizer::tok_err;

/// The single template of `chat_template.jinja`.
pub(crate) const TEMPLATE_FILE: &str = "chat_template.jinja";
/// The folder of named templates, `<name>.jinja`.
pub(crate) const TEMPLATE_DIR: &str = "additional_chat_templates";

/// The templates of a folder: one unnamed template, or several by name.
enum Templates {
    Single(String),
    Named(Vec<(String, String)>),
}

/// True when `dir` has a chat template in any of the places transformers 5 reads
/// (`chat_template.jinja`, `additional_chat_templates/*.jinja`, `tokenizer_config.json`
/// `chat_template`); unreadable files count as none.
pub(crate) fn has_chat_template(dir: &Path) -> bool {
    dir.join(TEMPLATE_FILE).is_file()
        || !jinja_files(&dir.join(TEMPLATE_DIR))
            .unwrap_or_default()
            .is_empty()
        || std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|c| c.get("chat_template").is_some())
}

/// The `*.jinja` files of `dir` by name (file stem), sorted; none when `dir` is absent.
fn jinja_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(stem) = name.strip_suffix(".jinja") {
            if path.is_file() {
                files.push((stem.to_string(), path.clone()));
            }
        }
    }
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| crate::error::PolicyError::io(path, e))
}

/// Every chat template of the folder `dir` (`cfg`: its `tokenizer_config.json`) and where they
/// were read from, for messages. Errors: as [`chat_template_source`], but for the name.
fn templates(dir: &Path, cfg: &serde_json::Value) -> Result<(Templates, String)> {
    let cfg_path = dir.join("tokenizer_config.json");
    let file = dir.join(TEMPLATE_FILE);
    let extra_dir = dir.join(TEMPLATE_DIR);
    let extra =
        jinja_files(&extra_dir).map_err(|e| crate::error::PolicyError::io(&extra_dir, e))?;
    Ok(if file.is_file() || !extra.is_empty() {
        let mut named = Vec::new();
        if file.is_file() {
            named.push(("default".to_string(), read(&file)?));
        }
        for (n, path) in &extra {
            let source = read(path)?;
            named.retain(|(m, _)| m != n);
            named.push((n.clone(), source));
        }
        let from = match (file.is_file(), extra.is_empty()) {
            (true, true) => file.display().to_string(),
            (false, _) => format!("{}/", extra_dir.display()),
            (true, false) => format!("{} and {}/", file.display(), extra_dir.display()),
        };
        match named.as_slice() {
            [(n, s)] if n == "default" => (Templates::Single(s.clone()), from),
            _ => (Templates::Named(named), from),
        }
    } else {
        let from = format!("{}: chat_template", cfg_path.display());
        match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => (Templates::Single(s.clone()), from),
            Some(serde_json::Value::Array(list)) => {
                let named = list
                    .iter()
                    .map(|t| {
                        let n = t.get("name")?.as_str()?;
                        Some((n.to_string(), t.get("template")?.as_str()?.to_string()))
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        tok_err(format!(
                            "{from}: expected a string or a list of {{\"name\", \"template\"}}"
                        ))
                    })?;
                (Templates::Named(named), from)
            }
            Some(_) => {
                return Err(tok_err(format!(
                    "{from}: expected a string or a list of {{\"name\", \"template\"}}"
                )))
            }
            None => {
                return Err(tok_err(format!(
                    "{}: no chat template (no {TEMPLATE_FILE}, no {TEMPLATE_DIR}/*.jinja, no \
                     chat_template in tokenizer_config.json); give model.tokenizer (a Hugging \
                     Face folder with a chat_template)",
                    dir.display()
                )))
            }
        }
    })
}

/// The Jinja source of the chat template of the folder `dir` (whose `tokenizer_config.json`,
/// already read, is `cfg`), as transformers 5 picks it: `name` when given, else the only
/// template, else the one named `default`.
///
/// Errors: [`crate::error::PolicyError::Io`] (an unreadable template file),
/// [`crate::error::PolicyError::Tokenizer`] naming the file and key: no template anywhere
/// (naming the three places), a malformed `chat_template` list, several templates and none
/// named `default` (or none named `name`), listing the names there are.
pub(crate) fn chat_template_source(
    dir: &Path,
    cfg: &serde_json::Value,
    name: Option<&str>,
) -> Result<String> {
    let (templates, from) = templates(dir, cfg)?;
    let want = name.unwrap_or("default");
    match templates {
        Templates::Single(s) if want == "default" => Ok(s),
        Templates::Single(_) => Err(tok_err(format!(
            "{from}: one unnamed chat template, no template named {want}"
        ))),
        Templates::Named(named) => {
            let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
            named
                .iter()
                .rev()
                .find(|(n, _)| n == want)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| {
                    tok_err(format!(
                        "{from}: no chat template named {want} (there are {})",
                        names.join(", ")
                    ))
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, name: Option<&str>) -> std::result::Result<String, String> {
        let cfg = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or_default();
        chat_template_source(dir, &cfg, name).map_err(|e| e.to_string())
    }

    #[test]
    fn files_replace_the_config_and_default_is_picked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let e = source(dir, None).unwrap_err();
        assert!(
            e.contains("no chat template") && e.contains("give model.tokenizer"),
            "{e}"
        );
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "default", "template": "D"}, {"name": "rag", "template": "R"}]}"#,
        )
        .unwrap();
        assert!(has_chat_template(dir));
        assert_eq!(source(dir, None).unwrap(), "D");
        assert_eq!(source(dir, Some("rag")).unwrap(), "R");
        // transformers 5's files take priority over the config's list.
        std::fs::create_dir(dir.join(TEMPLATE_DIR)).unwrap();
        std::fs::write(dir.join(TEMPLATE_DIR).join("tool_use.jinja"), "T").unwrap();
        let e = source(dir, None).unwrap_err();
        assert!(
            e.contains("no chat template named default (there are tool_use)"),
            "{e}"
        );
        std::fs::write(dir.join(TEMPLATE_FILE), "F").unwrap();
        assert_eq!(source(dir, None).unwrap(), "F");
        assert_eq!(source(dir, Some("tool_use")).unwrap(), "T");
        let e = source(dir, Some("rag")).unwrap_err();
        assert!(e.contains("(there are default, tool_use)"), "{e}");
    }
}
