//! Where the user message sits in a chat rendered with its real text: found from the same chat
//! rendered with a placeholder message ([`super::JinjaTemplate::chat`]).

use super::{MARK_CLOSE, MARK_OPEN};
use crate::error::Result;
use crate::tokenizer::tok_err;

/// Where the user message sits in a rendered chat: `rendered`, its bytes in the rendered
/// string, are `kept`, a byte range of the message text the caller gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MessageSpan {
    pub(super) rendered: std::ops::Range<usize>,
    pub(super) kept: std::ops::Range<usize>,
}

/// Finds the user message `user` in `real` (the chat rendered with it), given `shape` (the same
/// chat rendered with a one-placeholder message): the text around the placeholder must frame
/// `real`, and what lies between must be `user` itself or `user` with surrounding whitespace
/// trimmed (Jinja `| trim`, Python `.strip()`).
///
/// Errors: [`crate::PolicyError::Tokenizer`] naming what the template did instead.
pub(super) fn locate_message(shape: &str, real: &str, user: &str) -> Result<MessageSpan> {
    let open = shape.find(MARK_OPEN);
    if open.is_none() || shape.matches(MARK_OPEN).count() != 1 {
        return Err(tok_err(if open.is_none() {
            "chat_template: the template drops the user message"
        } else {
            "chat_template: the template repeats the user message; not supported"
        }));
    }
    let open = open.expect("checked above");
    let head = &shape[..open];
    let close = shape[open..]
        .find(MARK_CLOSE)
        .ok_or_else(|| tok_err("chat_template: the template cuts the user message"))?;
    let tail = &shape[open + close + MARK_CLOSE.len_utf8()..];
    let changed = || {
        tok_err(
            "chat_template: the template changes the user message other than by trimming \
             whitespace; not supported",
        )
    };
    if real.len() < head.len() + tail.len() || !real.starts_with(head) || !real.ends_with(tail) {
        return Err(changed());
    }
    let middle = &real[head.len()..real.len() - tail.len()];
    let lead = user.len() - user.trim_start().len();
    let start = [0, lead]
        .into_iter()
        .find(|&a| user[a..].starts_with(middle))
        .ok_or_else(changed)?;
    Ok(MessageSpan {
        rendered: head.len()..head.len() + middle.len(),
        kept: start..start + middle.len(),
    })
}
