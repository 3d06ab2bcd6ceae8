import pytest

from services.common.modeldir.tokenizer import COSYVOICE2_SPECIAL_TOKENS, CosyVoiceTokenizer
from services.tinymodel.tokenizer_files import write_tokenizer_dir

TEXTS = [
    "Hello world! 你好，世界。",
    "<|endofprompt|>用四川话说[breath]这句话 [laughter]ok",
    "  multiple   spaces\n\nnewlines 12345 ",
    "Ünïcödé e\u0301 café",
    "ｆｕｌｌ　ｗｉｄｔｈ and <strong>emphasis</strong>",
    "",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok") / "CosyVoice-BlankEN"
    write_tokenizer_dir(directory)
    return directory


def test_matches_transformers_tokenizer_with_reference_specials(tokenizer_dir):
    transformers = pytest.importorskip("transformers", reason="parity oracle is a test dependency")
    reference = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    reference.add_special_tokens(
        {
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": list(COSYVOICE2_SPECIAL_TOKENS),
        }
    )
    ours = CosyVoiceTokenizer.from_dir(tokenizer_dir)
    assert len(ours) == len(reference)
    for token in COSYVOICE2_SPECIAL_TOKENS:
        assert ours.token_id(token) == reference.convert_tokens_to_ids(token)
    for text in TEXTS:
        assert ours.encode(text) == reference([text])["input_ids"][0]


def test_specials_follow_the_vocabulary_in_reference_order(tokenizer_dir):
    ours = CosyVoiceTokenizer.from_dir(tokenizer_dir)
    eos = ours.token_id("<|endoftext|>")
    # <|im_start|>/<|im_end|> are declared by tokenizer_config.json; <|endofprompt|> is the
    # first CosyVoice addition, as 151646 follows 151643..151645 in the real model.
    assert ours.token_id("<|im_start|>") == eos + 1
    assert ours.endofprompt_id == eos + 3
    assert ours.token_id("[mn]") == len(ours) - 1
    ids = ours.encode("a<|endofprompt|>b")
    assert ours.endofprompt_id in ids
    assert ours.decode(ids) == "ab"
