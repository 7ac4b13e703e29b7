"""task.prompt_format=chat: a checkpoint's chat template rendered as transformers does, and task
cases wrapped in it with their length and needle positions intact (docs/design.md 5.1).

Rendering is checked against a hand-written Qwen3-style template (always), against committed
transformers output for the real Qwen3 tokenizer (scripts/make_chat_fixture.py; where the files
are present) and live against transformers (where it is installed too).
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pflash_jax.models.chat_template import ChatTemplateError, load_chat_template
from pflash_jax.tasks import TASKS, BudgetError, as_tokenizer, make_case, make_cases, score
from pflash_jax.tasks.chat import split_question
from tests.qwen3_tokenizer import require_qwen3_dir

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "chat" / "qwen3_chat.json"

# Qwen3's shape in a few lines, exercising what the environment must provide: trim_blocks /
# lstrip_blocks (the block tags on their own indented lines leave nothing behind), a special
# token from tokenizer_config.json (eos_token), tojson without HTML escaping, raise_exception.
TEMPLATE = """{% for m in messages %}
    {% if m.role == 'system' and not loop.first %}{{ raise_exception('system first') }}{% endif %}
<|im_start|>{{ m.role }}{% if m.meta is defined %} {{ m.meta | tojson }}{% endif %}

{{ m.content }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
    {% if enable_thinking is defined and enable_thinking is false %}
<think>

</think>

    {% endif %}
{% endif %}"""  # the blank line after the role line: trim_blocks eats the newline after endif
EOS = {"content": "<|im_end|>", "lstrip": False, "special": True}  # an AddedToken dict
BEFORE, AFTER = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _config_dir(tmp_path, **cfg) -> Path:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.fixture
def template(tmp_path):
    return load_chat_template(_config_dir(tmp_path, eos_token=EOS, chat_template=TEMPLATE))


# ---------------------------------------------------------------- rendering
def test_render_hand_written_template(template):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "meta": {"k": "<ä>"}}]
    assert template.render(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        '<|im_start|>user {"k": "<ä>"}\nHi<|im_end|>\n'
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert template.render(msgs, enable_thinking=True).endswith("Hi<|im_end|>\n<|im_start|>"
                                                                "assistant\n")
    assert template.render(msgs, add_generation_prompt=False).endswith("Hi<|im_end|>\n")
    assert template.frame() == (BEFORE, AFTER)


def test_template_errors_name_the_file(tmp_path, template):
    with pytest.raises(ChatTemplateError, match="system first"):
        template.render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    (tmp_path / "none").mkdir()
    d = _config_dir(tmp_path / "none", eos_token="<|im_end|>")
    with pytest.raises(ChatTemplateError, match=r"none/tokenizer_config.json has no chat_template"):
        load_chat_template(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChatTemplateError, match=r"empty/tokenizer_config.json does not exist"):
        load_chat_template(tmp_path / "empty")
    # the sandbox refuses what a Hub template must not do
    (tmp_path / "evil").mkdir()
    evil = load_chat_template(_config_dir(tmp_path / "evil",
                                          chat_template="{{ ''.__class__.__mro__ }}"))
    with pytest.raises(ChatTemplateError, match="evil/tokenizer_config.json"):
        evil.render([{"role": "user", "content": "x"}])


def test_template_sources(tmp_path):
    """chat_template.jinja beside the config wins (as in transformers); a list of named
    templates gives the "default" one."""
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ 1 }}"}]
    assert load_chat_template(_config_dir(tmp_path, chat_template=named)).render([]) == "D1"
    (tmp_path / "chat_template.jinja").write_text("J")
    t = load_chat_template(tmp_path)
    assert t.render([]) == "J" and t.source.endswith("chat_template.jinja")


def test_tiny_pair_has_no_template_and_says_where():
    """The embedded pair is raw-format only: asking for chat names its tokenizer_config.json."""
    from pflash_jax.run import chat_template
    from pflash_jax.run_config import ModelSpec

    with pytest.raises(ValueError, match=r"task.prompt_format=chat: .*tiny/target/"
                                         r"tokenizer_config.json has no chat_template"):
        chat_template(ModelSpec(embedded="target"))


def test_prompt_format_is_validated():
    from pflash_jax.run_config import to_run_config

    with pytest.raises(ValueError, match=r"task.prompt_format must be one of \('raw', 'chat'\), "
                                         r"got 'html'"):
        to_run_config({"task": {"prompt_format": "html"}})
    with pytest.raises(ValueError, match="task.prompt_format=chat needs text to wrap"):
        to_run_config({"task": {"name": "random", "prompt_format": "chat"}})
    assert to_run_config({}).task.prompt_format == "raw"


def test_prompt_file_becomes_one_user_message(tmp_path):
    """task.prompt_file with prompt_format=chat: the file's text is the user message; the prompt
    records how many tokens the template added."""
    from types import SimpleNamespace

    from pflash_jax.models.tokenizer import Tokenizer
    from pflash_jax.run import prompts
    from pflash_jax.run_config import to_run_config
    from pflash_jax.tasks.task_tokenizer import TINY_TOKENIZER_PATH

    ckpt = _config_dir(tmp_path, eos_token=EOS, chat_template=TEMPLATE)
    shutil.copyfile(TINY_TOKENIZER_PATH, ckpt / "tokenizer.json")
    (tmp_path / "p.txt").write_text("Read this.\nWhat is it?")
    tok = Tokenizer(ckpt / "tokenizer.json")
    c = to_run_config({"target": {"path": str(ckpt)},
                       "task": {"name": "file", "prompt_file": str(tmp_path / "p.txt"),
                                "prompt_format": "chat"}})
    (p,) = prompts(c, SimpleNamespace(tokenizer=tok, config=None))
    want = tok.encode(BEFORE + "Read this.\nWhat is it?" + AFTER)
    np.testing.assert_array_equal(p.ids, want)
    assert p.template_tokens == len(want) - len(tok.encode("Read this.\nWhat is it?")) > 0


# ---------------------------------------------------------------- task cases in the template
@pytest.mark.parametrize("task", list(TASKS))
def test_every_question_ends_with_an_answer_prefix(task, tiny):
    ask, prefix = split_question(make_case(task, 1024, tiny, 3).question)
    assert ask.startswith("\n") and prefix.rstrip().endswith(":"), (ask, prefix)


@pytest.mark.parametrize("task", list(TASKS))
def test_chat_case_length_needles_and_grading(task, tiny):
    """Exactly n_tokens with the template counted; the raw case inside it at an offset of the
    template's prefix, needles shifted by it; the answer prefix after the generation prompt."""
    n = 1024
    case = make_case(task, n, tiny, 3, chat=(BEFORE, AFTER))
    head, tail = tiny.encode(BEFORE), tiny.encode(AFTER)
    assert case.n_tokens == n and case.prompt_format == "chat"
    assert (case.template_prefix, case.template_tokens) == (len(head), len(head) + len(tail))
    ask, prefix = split_question(case.question)
    # the raw case this one wraps: the same seed at the length the wrapping leaves
    moved = len(tiny.encode(ask)) + len(tiny.encode(prefix)) - len(tiny.encode(case.question))
    raw = make_case(task, n - case.template_tokens - moved, tiny, 3)
    body = raw.n_tokens - len(tiny.encode(raw.question))
    np.testing.assert_array_equal(case.ids[: len(head)], head)
    np.testing.assert_array_equal(case.ids[len(head): len(head) + body], raw.ids[:body])
    np.testing.assert_array_equal(case.needle_positions, raw.needle_positions + len(head))
    np.testing.assert_array_equal(case.distractor_positions,
                                  raw.distractor_positions + len(head))
    np.testing.assert_array_equal(case.ids[case.needle_positions], raw.ids[raw.needle_positions])
    np.testing.assert_array_equal(case.ids[n - len(tail) - len(tiny.encode(prefix)):],
                                  np.concatenate([tail, tiny.encode(prefix)]))
    assert case.text.startswith(BEFORE) and case.text.endswith(AFTER + prefix)
    assert score(case, case.target) == 1.0  # grading reads the continuation only


def test_chat_budget_error_counts_the_template(tiny):
    added = len(tiny.encode(BEFORE)) + len(tiny.encode(AFTER))
    with pytest.raises(BudgetError, match=f"chat template takes {added} tokens") as e:
        make_case("niah_multivalue", 60, tiny, 0, chat=(BEFORE, AFTER))
    assert make_case("niah_multivalue", e.value.need, tiny, 0, chat=(BEFORE, AFTER))
    with pytest.raises(BudgetError, match="minimum"):
        make_case("niah_multivalue", e.value.need - 1, tiny, 0, chat=(BEFORE, AFTER))
    cases = make_cases("niah_single", 2, 512, tiny, chat=(BEFORE, AFTER))
    assert [c.n_tokens for c in cases] == [512, 512]


# ---------------------------------------------------------------- the real Qwen3 tokenizer
def _fixture():
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    spec = importlib.util.spec_from_file_location("mcf", REPO / "scripts/make_chat_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = require_qwen3_dir()
    if mod.file_hashes(d) != data["files"]:
        pytest.skip(f"{d} holds other tokenizer files than the fixture was made from")
    return d, data, mod


def test_qwen3_ids_equal_transformers_fixture():
    from pflash_jax.models.tokenizer import Tokenizer

    d, data, _ = _fixture()
    t, tok = load_chat_template(d), Tokenizer(d / "tokenizer.json")
    for name, conv in data["conversations"].items():
        text = t.render(conv["messages"])
        assert text == conv["text"], name
        assert tok.encode(text).tolist() == conv["ids"], name


def test_qwen3_ids_equal_transformers_live():
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from pflash_jax.models.tokenizer import Tokenizer

    d, _, mod = _fixture()
    ref = AutoTokenizer.from_pretrained(str(d))
    t, tok = load_chat_template(d), Tokenizer(d / "tokenizer.json")
    for name, messages in mod.CONVERSATIONS.items():
        want = mod.reference(ref, messages)
        assert tok.encode(t.render(messages)).tolist() == want["ids"], name


@pytest.mark.parametrize("task", ["niah_single", "niah_pflash", "niah_multikey"])
def test_qwen3_chat_case_is_the_rendered_prompt(task):
    """The id-level chat case equals encoding the rendered text in one piece: the frame's
    boundaries (special tokens, newlines) do not merge with the case's tokens."""
    d = require_qwen3_dir()
    tok = as_tokenizer(d / "tokenizer.json")
    frame = load_chat_template(d).frame()
    assert frame == (BEFORE, AFTER)  # Qwen3, thinking off
    case = make_case(task, 2048, tok, 7, chat=frame)
    assert case.n_tokens == 2048 and (case.template_prefix, case.template_tokens) == (3, 12)
    np.testing.assert_array_equal(tok.encode(case.text), case.ids)
    assert case.answers[0] in tok.decode(case.ids[case.needle_positions])
