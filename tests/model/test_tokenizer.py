import gzip
import hashlib
import itertools
from importlib import resources

import pytest
import torch

from mintclip.model import TextTooLongError, Tokenizer

CLASS_NAMES = [
    "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray", "stingray", "rooster",
    "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco", "indigo bunting", "American robin",
    "bulbul", "jay", "magpie", "chickadee", "American dipper", "kite (bird of prey)", "bald eagle", "vulture",
    "great grey owl", "fire salamander", "smooth newt", "newt", "spotted salamander", "axolotl",
    "American bullfrog", "tree frog", "tailed frog", "loggerhead sea turtle", "leatherback sea turtle",
    "mud turtle", "terrapin", "box turtle", "banded gecko", "green iguana", "Carolina anole",
    "Mexican hairless dog (xoloitzcuintli)", "Saint Bernard", "Yorkshire Terrier", "Shih Tzu", "Pekingese",
    "crane (bird)", "crane (machine)", "Dungeness crab", "jack-o'-lantern", "T-shirt", "CD player",
    "Granny Smith apple", "Crock Pot", "yellow lady's slipper", "Boeing 737-800", "A340-500", "DHC-8-100",
    "2012 BMW M3 coupe", "1991 Volkswagen Golf Hatchback", "Audi S5 Convertible 2012", "café au lait",
    "crème brûlée", "jalapeño", "piñata", "Ångström", "naïve art", "São Paulo street", "Zürich tram",
    "eggs_benedict", "hot_and_sour_soup", "Apply_Eye_Makeup", "Playing_Daf", "Annual Crop Land",
    "Herbaceous Vegetation Land", "Highway or Road", "Sea or Lake", "bubbly", "cobwebbed", "zigzagged",
    "moon_orchid", "pink primrose", "globe-flower", "bird of paradise", "water lily", "it's", "we've",
    "I'm", "you'll", "they'd", "rock 'n' roll", "3.5 inch floppy", "100% cotton", "C++", "e-mail",
    "U.S. flag", "#hashtag", "@mention", "dollar $5", "50/50", "a -- b", "tab\there", "  extra   spaces  ",
]
TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "itap of a {}.", "a sketch of a {}!",
             "X X X X {}.", "{}"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


def test_known_ids(tokenizer):
    ids = tokenizer(["a photo of a goldfish."])
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 40293, 269, 49407]
    assert ids[0, 8:].eq(0).all()
    assert tokenizer.vocab_size == 49408


def test_vocabulary_is_openais_file():
    raw = resources.files("mintclip.assets").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert gzip.decompress(raw).decode().startswith('"bpe_simple_vocab_16e6.txt#version: 0.2')


def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    t = Tokenizer()
    merges = [tuple(pair.split()) for pair in
              gzip.decompress(resources.files("mintclip.assets").joinpath("bpe_simple_vocab_16e6.txt.gz")
                              .read_bytes()).decode().split("\n")[1:49152 - 256 - 2 + 1]]
    return transformers.CLIPTokenizer(vocab=dict(t.encoder), merges=merges)


def test_ids_equal_hugging_face_clip_tokenizer(tokenizer):
    hf = hf_tokenizer()
    prompts = [template.format(name.replace("_", " ")) for template, name in itertools.product(TEMPLATES, CLASS_NAMES)]
    assert len(prompts) > 600
    ours = tokenizer(prompts)
    for row, prompt in zip(ours, prompts):
        expected = hf(prompt)["input_ids"]
        assert row[: len(expected)].tolist() == expected, prompt


def test_text_is_cleaned_like_openai(tokenizer):
    assert tokenizer.encode("fish &amp; chips") == tokenizer.encode("fish & chips")
    assert tokenizer.encode("  A   Photo\n of\ta DOG ") == tokenizer.encode("a photo of a dog")
    assert tokenizer.encode("ｆｕｌｌｗｉｄｔｈ") == tokenizer.encode("fullwidth")  # ftfy folds full-width forms


def test_too_long_text_is_an_error_unless_truncated(tokenizer):
    long_text = "a photo of " + "very " * 100 + "long dog."
    with pytest.raises(TextTooLongError, match="more than the context length 77"):
        tokenizer([long_text])
    ids = tokenizer([long_text], truncate=True)
    assert ids[0, 0] == tokenizer.sot_token and ids[0, -1] == tokenizer.eot_token
    assert ids[0].ne(0).all()


def test_decode_inverts_encode(tokenizer):
    assert tokenizer.decode(tokenizer.encode("a photo of a jalapeño.")).strip() == "a photo of a jalapeño ."
