"""A checkpoint's own chat template (Hugging Face `chat_template`), rendered as transformers does.

Design choices (docs/design.md section 5.1):
- Where the template comes from: `chat_template.jinja` beside the tokenizer when present (newer
  transformers save it there, and it wins over the config, as in `from_pretrained`), else the
  `chat_template` key of `tokenizer_config.json`, a string or a list of named templates of
  which "default" is used. No template is an error naming the file: guessing one would make
  a checkpoint's quality numbers depend on our guess.
- Rendering copies transformers' environment (`utils/chat_template_utils.py`): a sandboxed
  `ImmutableSandboxedEnvironment` (templates are code from the Hub), `trim_blocks` and
  `lstrip_blocks`, the `loopcontrols` extension, `raise_exception`, a `tojson` that does not
  HTML-escape, `strftime_now`; the named special tokens of tokenizer_config.json (bos_token,
  eos_token, ...) are template variables as in `apply_chat_template`.
- Thinking off by default: `enable_thinking=False` (Qwen3's template then writes an empty
  `<think>\\n\\n</think>\\n\\n` block into the generation prompt, so the next token is the
  answer); templates that do not know the variable ignore it.
- `frame()` renders one user message around a placeholder and splits there, so a task case
  assembled from token ids (pflash_jax/tasks/case.py) can be wrapped without re-tokenizing it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import datetime
from pathlib import Path

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
# The named special tokens transformers passes to every template (special_tokens_map)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")
# Stands for the user message in `frame`; no template edits a string of letters and digits
_PLACEHOLDER = "PFLASHUSERMESSAGE7f3a9c"


class ChatTemplateError(ValueError):
    """A checkpoint has no usable chat template; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    template: str
    source: str  # the file it was read from (for error messages and metrics)
    special_tokens: tuple[tuple[str, str], ...] = ()  # (name, token text), hashable

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True,
               enable_thinking: bool = False) -> str:
        """The prompt text transformers' `apply_chat_template(messages, tokenize=False,
        add_generation_prompt=..., enable_thinking=...)` gives."""
        import jinja2

        try:  # compiling and rendering: both raise jinja2.TemplateError
            return _compile(self.template).render(
                messages=messages, tools=None, documents=None,
                add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking,
                **dict(self.special_tokens))
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{self.source}: chat_template cannot be rendered: "
                                    f"{e}") from None

    def frame(self, *, enable_thinking: bool = False) -> tuple[str, str]:
        """(before, after): the text the template puts around one user message's content,
        generation prompt included, so that render([user(x)]) == before + x + after."""
        text = self.render([{"role": "user", "content": _PLACEHOLDER}],
                           enable_thinking=enable_thinking)
        if text.count(_PLACEHOLDER) != 1:
            raise ChatTemplateError(f"{self.source}: chat_template does not write a user "
                                    f"message's content verbatim exactly once")
        before, after = text.split(_PLACEHOLDER)
        return before, after


def load_chat_template(folder: str | Path) -> ChatTemplate:
    """The chat template of the checkpoint (or tokenizer) folder; ChatTemplateError naming
    tokenizer_config.json when there is none."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    cfg: dict = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ChatTemplateError(f"{cfg_path}: not valid JSON ({e})") from None
    special = tuple((k, _token_text(cfg[k])) for k in SPECIAL_TOKENS if cfg.get(k) is not None)
    jinja_path = folder / TEMPLATE_FILE
    if jinja_path.is_file():
        return ChatTemplate(jinja_path.read_text(encoding="utf-8"), str(jinja_path), special)
    if not cfg_path.is_file():
        raise ChatTemplateError(f"{cfg_path} does not exist, so there is no chat_template to "
                                f"render (nor a {TEMPLATE_FILE} beside it)")
    t = cfg.get("chat_template")
    if isinstance(t, list):  # named templates (transformers' multi-template format)
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default")
    if not isinstance(t, str) or not t.strip():
        raise ChatTemplateError(f"{cfg_path} has no chat_template (nor is there a "
                                f"{TEMPLATE_FILE} beside it)")
    return ChatTemplate(t, str(cfg_path), special)


def _token_text(v) -> str:
    # tokenizer_config.json stores a token as its text or as an AddedToken dict
    return v.get("content", "") if isinstance(v, dict) else str(v)


def _raise_exception(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes (<, >, &, '); transformers replaces it with this
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.cache
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env.from_string(template)  # a syntax error is a jinja2.TemplateError: see render
