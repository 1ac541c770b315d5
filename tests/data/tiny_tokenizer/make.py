"""Write a tiny Hugging Face tokenizer folder, a local stand-in for SigLIP 2's Hub tokenizer in the tests.

    python tests/data/tiny_tokenizer/make.py OUT_DIR

SigLIP 2's text tower in open_clip takes its tokenizer from the Hub (``hf_tokenizer_name: timm/ViT-B-16-SigLIP2``,
read by ``transformers.AutoTokenizer``); the tests give their tiny SigLIP 2 tower this folder instead, so nothing
downloads. Like the real one it is a fast (``tokenizers``) tokenizer with a pad token (id 0), an end-of-text token
appended to every text, and no unknown pieces: a byte-level BPE of 512 entries learnt from the words below, which
cover the captions, categories and class names of the test fixtures (any other text still tokenizes, in bytes).
"""
from __future__ import annotations

import sys
from pathlib import Path

VOCAB_SIZE = 512
SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2
WORDS = """a an the of in on at near with and or by photo satellite image aerial view remote sensing scene picture
airplane airport ship harbor harbour storage tank tanks river road roads building buildings water tree trees grass
farmland field fields forest bare land background low vegetation impervious surface car cars clutter vehicle boat
bridge baseball court tennis basketball ground track swimming pool roundabout soccer plane helicopter container crane
large small white red green blue moored pier parking lot house houses residential industrial commercial desert beach
mountain cloud snow rangeland agriculture urban barren wetland sea lake pond meadow railway station stadium church
there is are one two three four five many some this that scene tile number""".split()


def make(out: str | Path) -> Path:
    """Write the tokenizer into ``out`` (``tokenizer.json`` and its configuration) and return the folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4 + WORDS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "tiny_tokenizer"))
