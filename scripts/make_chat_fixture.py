"""Make the chat-template fixture CI checks our rendering against (no transformers in CI).

Run with a Python that has transformers, jinja2 and tokenizers (torch is not needed):
    python scripts/make_chat_fixture.py [TOKENIZER_DIR] [OUT]
    # defaults: $PFLASH_QWEN3_TOKENIZER (a folder with Qwen3's tokenizer.json and
    #           tokenizer_config.json), else ../shared/qwen3-tokenizer beside the repo (this
    #           project's dev machines; the tests look in the same places)
    #           tests/fixtures/chat/qwen3_chat.json

For each conversation in CONVERSATIONS it stores transformers' own
`apply_chat_template(messages, tokenize=..., add_generation_prompt=True,
enable_thinking=False)` text and ids, plus the sha256 of the two tokenizer files, so the test
knows it compares against the same template. `CONVERSATIONS` is importable: the live test
(tests/tasks/test_chat_format.py) renders the same ones with transformers where installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ("tokenizer.json", "tokenizer_config.json")
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the special magic number for lily?"}],
    "system_user": [
        {"role": "system", "content": "You answer with one number."},
        {"role": "user", "content": "Some text.\nWhat is the number?\n"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Remember 4412093."},
        {"role": "assistant", "content": "<think>\nA number to keep.\n</think>\n\nOK."},
        {"role": "user", "content": "Which number? Answer: The number is:"},
    ],
    "tool_call": [  # the template's tojson filter (arguments as a dict) and tool turns
        {"role": "user", "content": "Look up lily."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "lookup",
                                              "arguments": {"key": "lily", "note": "ä<b>"}}}]},
        {"role": "tool", "content": "4412093"},
    ],
    "unicode_and_spaces": [
        {"role": "user", "content": "  Grüße, 東京 — \"quotes\" & <tags>  \n\n"},
    ],
}


def file_hashes(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES}


def reference(tok, messages) -> dict:
    kw = dict(add_generation_prompt=True, enable_thinking=False)
    text = tok.apply_chat_template(messages, tokenize=False, **kw)
    ids = tok.apply_chat_template(messages, tokenize=True, **kw)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return an encoding
        ids = ids["input_ids"]
    return {"text": text, "ids": [int(i) for i in ids]}


def main() -> None:
    import transformers
    from transformers import AutoTokenizer

    default = os.environ.get("PFLASH_QWEN3_TOKENIZER") or REPO.parent / "shared" / "qwen3-tokenizer"
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(default)
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else (
        REPO / "tests" / "fixtures" / "chat" / "qwen3_chat.json")
    if not (src / "tokenizer_config.json").is_file():
        raise SystemExit(f"make_chat_fixture: no Qwen3 tokenizer at {src} (pass its folder: "
                         f"python scripts/make_chat_fixture.py QWEN3_TOKENIZER_DIR, or set "
                         f"PFLASH_QWEN3_TOKENIZER)")
    tok = AutoTokenizer.from_pretrained(str(src))
    data = {"transformers": transformers.__version__, "files": file_hashes(src),
            "conversations": {name: {"messages": m, **reference(tok, m)}
                              for name, m in CONVERSATIONS.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    # one line per id list: the file stays short to read and to diff
    text = json.dumps(data, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s+([\d,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m[1]) + "]",
                  text)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(CONVERSATIONS)} conversations, transformers "
          f"{transformers.__version__})")


if __name__ == "__main__":
    main()
