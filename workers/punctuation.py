"""Punctuation, once per job: a CT-Transformer (FunASR's ct-punc) restores marks in a job's merged words.

It runs on the whole merged text, never per chunk, so a sentence cut by a chunk edge is punctuated
whole. The marks end up on the words (字 -> 字。), which is where merge finds the sentence ends that
cues end at. Models that punctuate themselves (Whisper, SenseVoice) get nothing added.

``punctuate`` takes the texts of many jobs and runs them through the network together: FunASR's own
inference (CTTransformer.inference) takes one text at a time, in windows of 20 tokens, each window
starting after the previous one's last sentence end. Here every text's next window is one row of the
same padded batch, with exactly FunASR's window rules, so the marks are the ones FunASR would give
(tests/test_punctuation.py compares them).
"""

from __future__ import annotations

import functools
import logging
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from app.catalog.postprocess import looks_like_punc_model, missing_punc_model_reason, punc_model_location
from app.errors import ModelUnavailable
from workers.engines.base import Word

log = logging.getLogger("asrq.punctuation")

SPLIT_SIZE = 20  # tokens per window, FunASR's default
_CACHE_POP_TOKENS = 200  # a window carried this long with no sentence end is cut at its last comma
_ASCII_MARKS = {"，": ",", "。": ".", "？": "?"}  # after an English word, as FunASR writes them


# --- the model ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PuncModel:
    net: Any  # funasr CTTransformer
    tokenizer: Any  # funasr CharTokenizer
    punc_list: tuple[str, ...]
    sentence_end_id: int
    device: str

    def is_sentence_end(self, mark: int) -> bool:
        return self.punc_list[mark] in ("。", "？")


@functools.lru_cache(maxsize=2)
def get_punc_model(name: str) -> PuncModel:
    """The punctuation model, loaded once per process (only successful loads are cached). A model that
    is missing or that FunASR rejects is a ModelUnavailable: the job fails with the reason."""
    from app.settings import get_settings

    settings = get_settings()
    folder = punc_model_location(name, settings.models_dir)
    if not looks_like_punc_model(folder):
        raise ModelUnavailable(missing_punc_model_reason(name, settings) or f"punc_model {name!r} is not installed")
    t0 = time.monotonic()
    try:
        from funasr import AutoModel  # importing funasr takes seconds; only workers that punctuate pay

        auto = AutoModel(model=str(folder), device="cpu", disable_update=True, disable_pbar=True,
                         log_level="ERROR",
                         # one thread, as the VAD: a CPU worker runs one process per core
                         ncpu=1)
    except (MemoryError, OSError):
        raise  # another try may fix these
    except Exception as e:  # noqa: BLE001 - a folder FunASR cannot build a model from
        raise ModelUnavailable(f"punc_model {name!r} cannot be loaded: {type(e).__name__}: {str(e)[:400]}") from e
    net = auto.model
    log.info("punctuation model %s loaded in %.2f s", name, time.monotonic() - t0)
    return PuncModel(net, auto.kwargs["tokenizer"], tuple(net.punc_list), int(net.sentence_end_id),
                     auto.kwargs.get("device", "cpu"))


# --- marks ------------------------------------------------------------------------------------------------

def punctuates_itself(words: list[Word]) -> bool:
    """True when the engine already wrote punctuation (SenseVoice, Whisper): nothing is added then."""
    return any(_is_punct(w.word[-1]) for w in words if w.word)


def _is_punct(c: str) -> bool:
    return unicodedata.category(c).startswith("P")


def _tokens(model: PuncModel, words: list[Word]) -> tuple[list[str], list[int]]:
    """FunASR's split of the text into tokens, and the word each token ends in."""
    from funasr.models.ct_transformer.utils import split_words

    tokens = [t for t in split_words(" ".join(w.word for w in words), jieba_usr_dict=model.net.jieba_usr_dict)
              if t.strip()]
    owner = [i for i, w in enumerate(words) for c in w.word if not c.isspace()]
    if not owner:
        return [], []
    ends, pos = [], 0
    for t in tokens:
        pos += len("".join(t.split()))
        ends.append(owner[min(pos, len(owner)) - 1])
    return tokens, ends


def punc_ids(model: PuncModel, token_texts: list[list[str]]) -> list[list[int]]:
    """A mark id per token for every text (indices into model.punc_list), computed for all texts in one
    padded batch per window step. Same windows, carry-over and final full stop as FunASR's inference."""
    import numpy as np
    import torch

    ids = [np.asarray(model.tokenizer.encode(t), dtype=np.int64) if t else np.zeros(0, np.int64)
           for t in token_texts]
    # FunASR's split_to_mini_sentence: full windows, then the remainder as one more
    windows = [[x[k:k + SPLIT_SIZE] for k in range(0, len(x), SPLIT_SIZE)] for x in ids]
    carry = [np.zeros(0, np.int64) for _ in ids]
    marks: list[list[int]] = [[] for _ in ids]
    step = 0
    with torch.no_grad():
        while True:
            active = [n for n, w in enumerate(windows) if step < len(w)]
            if not active:
                break
            seqs = [np.concatenate((carry[n], windows[n][step])) for n in active]
            width = max(len(s) for s in seqs)
            batch = torch.zeros((len(seqs), width), dtype=torch.int64)
            for r, s in enumerate(seqs):
                batch[r, :len(s)] = torch.from_numpy(s)
            lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
            y, _ = model.net.punc_forward(text=batch.to(model.device), text_lengths=lengths.to(model.device))
            best = y.topk(1, dim=-1).indices.squeeze(-1).cpu().numpy()
            for r, n in enumerate(active):
                p = [int(v) for v in best[r, :len(seqs[r])]]
                if step < len(windows[n]) - 1:
                    cut = _window_end(model, p)
                    carry[n] = seqs[r][cut + 1:]
                    p = p[:cut + 1]
                    if p and not model.is_sentence_end(p[-1]):
                        p[-1] = model.sentence_end_id  # cut at a comma: that comma ends a sentence now
                else:
                    carry[n] = np.zeros(0, np.int64)
                    if p and not model.is_sentence_end(p[-1]):
                        p[-1] = model.sentence_end_id  # FunASR closes the text with a full stop
                marks[n].extend(p)
            step += 1
    return marks


def _window_end(model: PuncModel, p: list[int]) -> int:
    """Where FunASR ends a window: its last sentence end (searched from the second-to-last token down to
    the third), else, once the carried text is too long, its last comma; -1 carries the whole window."""
    last_comma = -1
    for i in range(len(p) - 2, 1, -1):
        if model.is_sentence_end(p[i]):
            return i
        if last_comma < 0 and model.punc_list[p[i]] == "，":
            last_comma = i
    return last_comma if len(p) > _CACHE_POP_TOKENS and last_comma >= 0 else -1


def punctuate(model: PuncModel, texts: list[list[Word]]) -> list[list[Word]]:
    """Every text's words with the restored marks attached (and English sentence starts capitalised, as
    FunASR does); times are unchanged. All texts go through the model together."""
    split = [_tokens(model, words) for words in texts]
    all_marks = punc_ids(model, [tokens for tokens, _ in split])
    out = []
    for words, (tokens, ends), marks in zip(texts, split, all_marks):
        mark_of = {}
        for owner, m in zip(ends, marks):
            mark_of[owner] = m  # a word split into several tokens takes its last token's mark
        new: list[Word] = []
        sentence_start = True
        for i, w in enumerate(words):
            text = w.word
            if sentence_start and text[:1].isascii() and text[:1].isalpha():
                text = text[0].upper() + text[1:]
            mark = model.punc_list[mark_of[i]] if i in mark_of else "_"
            if mark not in ("_", "<unk>"):
                text += _ASCII_MARKS.get(mark, mark) if text[-1:].isascii() else mark
                sentence_start = mark in ("。", "？")
            else:
                sentence_start = False
            new.append(Word(w.start_s, w.end_s, text))
        out.append(new)
    return out
