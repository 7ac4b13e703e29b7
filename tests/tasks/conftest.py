"""Tokenizers for the task tests: the committed tiny one always; the real Qwen3 one from
../shared (next to the repo, or $PFLASH_QWEN3_TOKENIZER) when present, else its tests skip."""

import pytest

from pflash_jax.tasks import as_tokenizer, tiny_tokenizer
from tests.qwen3_tokenizer import QWEN3_JSON


@pytest.fixture(scope="session")
def tiny():
    return as_tokenizer(tiny_tokenizer())


@pytest.fixture(scope="session")
def qwen3():
    if not QWEN3_JSON.exists():
        pytest.skip(f"Qwen3 tokenizer not found at {QWEN3_JSON}")
    return as_tokenizer(QWEN3_JSON)


@pytest.fixture(scope="session", params=["tiny", "qwen3"])
def any_tok(request):
    return request.getfixturevalue(request.param)
