#!/usr/bin/env python3
"""Writes SentencePiece GGUF tokenizer fixtures for logo's tests (tests/tests/sentencepiece.rs).

Usage: make-sp-fixtures.py OUT_DIR TEXT_FILE...

Trains a small SentencePiece BPE model (vocab 2000, byte_fallback, identity normalisation, no
whitespace clean-up, as Llama 2's tokenizer was trained) on the TEXT_FILEs with two control
symbols (`<start_of_turn>`, `<end_of_turn>`) and one user-defined symbol (`<think>`), then
writes it as GGUFs the way llama.cpp's `convert_hf_to_gguf.py` writes a SentencePiece vocabulary
(`tokenizer.ggml.model = llama`; tokens, scores, token types 1 normal, 2 unknown, 3 control,
4 user-defined, 6 byte; `<unk>` 0, `<s>` 1, `</s>` 2; `add_bos_token`, `add_space_prefix`):

- OUT_DIR/sp.gguf: `add_space_prefix = true` and a Gemma-style `tokenizer.chat_template`;
- OUT_DIR/sp-nospace.gguf: `add_space_prefix = false`, no chat template.

Each holds a one-layer Llama header (`llama.*` keys) and one tiny tensor, so that both a GGUF
reader (candle's `gguf_file`) and transformers' `AutoTokenizer.from_pretrained(dir,
gguf_file=...)` accept it. Also writes OUT_DIR/sp.model (the SentencePiece model).
Needs the PyPI packages `sentencepiece` and `gguf` (trainer/tests/py/requirements.txt).
"""
import os
import sys

import gguf
import numpy as np
import sentencepiece as spm

VOCAB_SIZE = 2000
CONTROL = ["<start_of_turn>", "<end_of_turn>"]
USER_DEFINED = ["<think>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def train(out_dir, texts):
    """Trains the SentencePiece model; returns its processor."""
    prefix = os.path.join(out_dir, "sp")
    spm.SentencePieceTrainer.train(
        input=texts,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        control_symbols=CONTROL,
        user_defined_symbols=USER_DEFINED,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def token_type(sp, i):
    """llama.cpp's `llama_token_type` of piece `i` (convert_hf_to_gguf.py `_create_vocab_sentencepiece`)."""
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    if sp.id_to_piece(i) in USER_DEFINED:
        return gguf.TokenType.USER_DEFINED
    return gguf.TokenType.NORMAL


def write_gguf(path, sp, add_space_prefix, chat_template):
    n = sp.get_piece_size()
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("logo-sp-fixture")
    w.add_context_length(4096)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([sp.id_to_piece(i).encode("utf-8") for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([int(token_type(sp, i)) for i in range(n)])
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(add_space_prefix)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.zeros((n, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out_dir, texts = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    sp = train(out_dir, texts)
    write_gguf(os.path.join(out_dir, "sp.gguf"), sp, True, CHAT_TEMPLATE)
    write_gguf(os.path.join(out_dir, "sp-nospace.gguf"), sp, False, None)


if __name__ == "__main__":
    main()
