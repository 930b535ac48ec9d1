"""Stand-ins for what lesson 09's paper mode downloads, in the real on-disk formats.

- ``hf/facebook/opt-125m/``: a *tiny* OPT (2 layers, width 64) built from an ``OPTConfig`` with
  random weights, and a byte-level BPE tokenizer trained on the stand-in text, both written by
  ``save_pretrained`` -- the files ``huggingface-cli download facebook/opt-125m --local-dir`` gives
  (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...), so ``from_pretrained`` reads it.
- ``hf/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet``: a ``text`` column, as in
  the Hub repository.
- ``hf/allenai/c4/en/c4-train.00000-of-01024.json.gz``: gzipped JSON lines with ``text``,
  ``timestamp`` and ``url``, as in the Hub repository; documents long enough for 2,048-token segments.
- ``tinyshakespeare/input.txt`` and its ``MANIFEST.sha256``: a few thousand characters of made-up verse.

Nothing here is a result: numbers computed on these files are labelled stand-in.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import pathlib
import random

MARKER = "PRUNINGLIB-STAND-IN"  # the marker file of tests/standins/vision.py
_NOTE = ("Stand-in written by tests/standins/text.py for lesson 09's smoke run (python -m pruninglib.run --smoke): "
         "made-up text and a random tiny OPT in the real on-disk formats. Nothing computed from it is a result.\n")

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which be this had not "
         "but they their have one all been she he we you would there who more when some could time two first "
         "king queen night storm river city house light dark speak love death crown sword field sea stone").split()


def _text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if len(line) >= rng.randint(6, 14):
            lines.append(" ".join(line).capitalize() + rng.choice([".", ",", ";", "?"]))
            line = []
    return "\n".join(lines) + "\n"


def _mark(folder: pathlib.Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(_NOTE)
    return MARKER


def write(root: pathlib.Path) -> list[str]:
    """Write the stand-ins below ``root`` (a data search-path folder); return what was written.

    Without the optional extra ``llm`` (transformers, datasets) only Tiny Shakespeare is written: paper
    mode then stops at ``load_opt`` with an ImportError that names ``pip install -e '.[llm]'``.
    """
    root = pathlib.Path(root)
    written: list[str] = []
    # Tiny Shakespeare (plain text, 90/10 split by the loader)
    ts = root / "tinyshakespeare"
    ts.mkdir(parents=True, exist_ok=True)
    body = "FIRST CITIZEN:\n" + _text(3000, 0)
    (ts / "input.txt").write_text(body, encoding="utf-8")
    (ts / "MANIFEST.sha256").write_text(f"{hashlib.sha256(body.encode()).hexdigest()}  input.txt\n")
    _mark(ts)
    written += ["tinyshakespeare/input.txt", "tinyshakespeare/MANIFEST.sha256", f"tinyshakespeare/{MARKER}"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import torch
        from tokenizers import ByteLevelBPETokenizer
        from transformers import GPT2TokenizerFast, OPTConfig, OPTForCausalLM
    except ImportError:
        return written
    # WikiText-2 raw test split (parquet, one 'text' column of lines, as on the Hub)
    wiki = _text(12000, 1)
    rows = [" = Stand-in = \n", ""] + [ln + " \n" for ln in wiki.splitlines()]
    p = root / "hf/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet"
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows}), p)
    _mark(p.parent.parent)
    written += [str(p.relative_to(root)), f"hf/Salesforce/wikitext/{MARKER}"]
    # C4 first training shard (json lines, gzipped)
    c4 = root / "hf/allenai/c4/en/c4-train.00000-of-01024.json.gz"
    c4.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(c4, "wt", encoding="utf-8") as f:
        for i in range(4):
            f.write(json.dumps({"text": _text(4000, 10 + i).replace("\n", " "), "timestamp": "2019-04-25T12:57:54Z",
                                "url": f"https://example.org/standin/{i}"}) + "\n")
    _mark(c4.parent.parent)
    written += [str(c4.relative_to(root)), f"hf/allenai/c4/{MARKER}"]
    # tiny OPT + byte-level BPE tokenizer in the layout of facebook/opt-125m
    opt = root / "hf/facebook/opt-125m"
    opt.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([wiki, body], vocab_size=400, min_frequency=2, special_tokens=["<pad>", "</s>", "<unk>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="</s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", add_bos_token=True)
    tok.save_pretrained(opt)
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
                    max_position_embeddings=2048, word_embed_proj_dim=64, pad_token_id=tok.pad_token_id,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    OPTForCausalLM(cfg).save_pretrained(opt)
    _mark(opt)
    written += sorted(str(q.relative_to(root)) for q in opt.iterdir())
    return written
