"""Build a tiny random-weight SenseVoiceSmall in FunASR's local model-folder format.

Like tests/tiny_paraformer.py it knows nothing about speech: it exists so tests drive FunASR's real
SenseVoice loading, frontend, rich-tag queries, CTC decoding and CTC-alignment timestamps on CPU in
seconds, with no network and no downloaded weights.

SenseVoice writes four rich tags before the text (``<|zh|><|NEUTRAL|><|Speech|><|woitn|>``): its
encoder reads four query embeddings (language, event, emotion, text norm) in front of the speech
frames, and the CTC head's outputs at those four frames are the tags. Random weights would put
words there, so the model is wired as follows:

* every attention block's context (``linear_out``) and FSMN memory taps are zero, which leaves each
  block a per-frame network: a frame's output depends on that frame alone, so the query frames say
  the same thing whatever the audio, and a chunk decodes the same alone or padded in a batch;
* each tag's CTC row is a matched filter for the hidden state one query frame produces (a cosine
  threshold), so a tag fires on its own query frame and on no speech frame.

What the tiny model answers (``EXPECTED``): the language asked for, or ``ja`` under ``auto`` (it
cannot detect anything, and a fixed answer no hint would give shows the tag is what was read);
always ``HAPPY`` and ``Laughter``, unlike the usual ``NEUTRAL``/``Speech``, so a test can tell a
parsed tag from a default; and ``withitn``/``woitn`` as ``use_itn`` asked. Speech frames decode to
random BPE pieces of a tiny sentencepiece model trained here, with the tags as user symbols.
"""

from __future__ import annotations

import io
import json
import pathlib

import torch
import yaml

from tests.tiny_paraformer import _write_cmvn

LANGUAGES = ("zh", "en", "yue", "ja", "ko", "nospeech")
EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN")
EVENTS = ("Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Event_UNK")
TEXT_NORMS = ("withitn", "woitn")
TAGS = [f"<|{t}|>" for t in (*LANGUAGES, *EMOTIONS, *EVENTS, *TEXT_NORMS)]
#: what this model always says: the rich tags a test expects back
EXPECTED = {"auto_language": "ja", "emotion": "HAPPY", "event": "Laughter"}
# SenseVoiceSmall's own file names (its configuration.json points FunASR at them)
BPE_FILE = "chn_jpn_yue_eng_ko_spectok.bpe.model"
D_MODEL = 32
N_MELS, LFR_M, LFR_N = 80, 7, 6
# Query embedding rows, as SenseVoiceSmall.inference indexes them: lid_dict, then event/emotion, text norm.
_LID_ROWS = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
_EMOTION_ROW, _EVENT_ROW = 1, 2  # the tags come out in this order: emotion, then event
_TEXTNORM_ROWS = {"withitn": 14, "woitn": 15}
# Text the BPE model learns its pieces from: English words and Mandarin characters.
_CORPUS = [
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country",
    "it was the first great sorrow of his life it was not so much the loss of the cotton itself",
    "if the reader will excuse me i will say nothing of my antecedents nor of the circumstances",
    "one two three four five six seven eight nine zero the horizon seems extremely distant",
    "甚至出现交易几乎停滞的情况 我想问一下广州市新区的房价 在海滨一带 这是一个大问题",
    "我们的人民 中国 上海 北京 你好 谢谢 今天天气很好",
]
_COSINE_THRESHOLD = 0.8
_TAG_GAIN = 12.0


def _config(vocab_size: int) -> dict:
    # Same components and options as SenseVoiceSmall's config.yaml, with tiny sizes; no specaug
    # (train-time only) and no normalize (am.mvn is applied by the frontend).
    return {
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": {
            "output_size": D_MODEL,
            "attention_heads": 2,
            "linear_units": 64,
            "num_blocks": 2,
            "tp_blocks": 1,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": N_MELS,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": LFR_M,
            "lfr_n": LFR_N,
            "cmvn_file": None,
        },
    }


def _train_bpe(path: pathlib.Path) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=model, model_type="bpe", vocab_size=200,
        hard_vocab_limit=False, character_coverage=1.0, user_defined_symbols=TAGS, num_threads=1,
        # SenseVoice's timestamps re-encode each decoded piece on its own and expect that piece back:
        # a dummy "▁" in front, or a stripped leading "▁", would turn one piece into others
        add_dummy_prefix=False, remove_extra_whitespaces=False, minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def _per_frame(model: torch.nn.Module) -> None:
    enc = model.encoder
    for layer in [*enc.encoders0, *enc.encoders, *enc.tp_encoders]:
        layer.self_attn.linear_out.weight.zero_()
        layer.self_attn.linear_out.bias.zero_()
        layer.self_attn.fsmn_block.weight.zero_()


def _query_states(model: torch.nn.Module) -> dict[tuple[int, int], torch.Tensor]:
    """(query row, frame position) -> the encoder's output there, unit length."""
    model.eval()
    rows = {(r, 0) for r in _LID_ROWS.values()} | {(_EMOTION_ROW, 1), (_EVENT_ROW, 2)}
    rows |= {(r, 3) for r in _TEXTNORM_ROWS.values()}
    out = {}
    for row, pos in rows:
        frames = torch.zeros(1, 6, model.embed.weight.shape[1])
        frames[0, pos] = model.embed.weight[row]
        h, _ = model.encoder(frames, torch.tensor([6]))
        out[(row, pos)] = torch.nn.functional.normalize(h[0, pos], dim=0)
    return out


def build_tiny_sensevoice(dest: pathlib.Path) -> pathlib.Path:
    """Write config.yaml, configuration.json, model.pt, am.mvn and the BPE model into dest; return dest."""
    import sentencepiece as spm
    from funasr.register import tables  # imported late: importing funasr takes seconds

    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _train_bpe(dest / BPE_FILE)
    sp = spm.SentencePieceProcessor(model_file=str(dest / BPE_FILE))
    vocab = sp.GetPieceSize()
    config = _config(vocab)

    torch.manual_seed(0)
    model = tables.model_classes.get(config["model"])(
        **config["model_conf"], encoder=config["encoder"], encoder_conf=config["encoder_conf"],
        input_size=N_MELS * LFR_M, vocab_size=vocab,
    )
    with torch.no_grad():
        _per_frame(model)
        # "auto" asks the model to detect the language; this one always answers EXPECTED["auto_language"]
        model.embed.weight[_LID_ROWS["auto"]] = model.embed.weight[_LID_ROWS[EXPECTED["auto_language"]]]
        states = _query_states(model)
        wanted = {f"<|{lang}|>": (row, 0) for lang, row in _LID_ROWS.items() if lang != "auto"}
        wanted[f"<|{EXPECTED['emotion']}|>"] = (_EMOTION_ROW, 1)
        wanted[f"<|{EXPECTED['event']}|>"] = (_EVENT_ROW, 2)
        wanted |= {f"<|{norm}|>": (row, 3) for norm, row in _TEXTNORM_ROWS.items()}
        lo = model.ctc.ctc_lo
        scale = D_MODEL ** 0.5  # the final LayerNorm leaves every frame this long
        for tag in TAGS:
            tid = sp.PieceToId(tag)
            if tag in wanted:
                lo.weight[tid] = _TAG_GAIN * states[wanted[tag]]
                lo.bias[tid] = -_TAG_GAIN * _COSINE_THRESHOLD * scale
            else:  # tags this model never says
                lo.weight[tid] = 0.0
                lo.bias[tid] = -30.0
        # blank (<unk>, id 0) about as likely as a piece on speech frames; <s>/</s> never
        lo.bias[0] = 0.6
        lo.bias[1:3] = -30.0
        _check_tags(model, states, wanted, sp)

    config["tokenizer_conf"]["bpemodel"] = BPE_FILE
    config["frontend_conf"]["cmvn_file"] = "am.mvn"
    (dest / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (dest / "configuration.json").write_text(json.dumps({
        "framework": "pytorch",
        "task": "auto-speech-recognition",
        "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"bpemodel": BPE_FILE}, "frontend_conf": {"cmvn_file": "am.mvn"}},
    }, indent=1), encoding="utf-8")
    _write_cmvn(dest / "am.mvn", N_MELS * LFR_M)
    torch.save(model.state_dict(), dest / "model.pt")
    return dest


def _check_tags(model, states, wanted, sp) -> None:  # noqa: ANN001
    """Each query frame's best token is its tag, by a clear margin (a build that would not is refused)."""
    for tag, key in wanted.items():
        logits = model.ctc.ctc_lo(states[key] * D_MODEL ** 0.5)
        top2 = logits.topk(2)
        assert sp.IdToPiece(int(top2.indices[0])) == tag, (tag, sp.IdToPiece(int(top2.indices[0])))
        assert float(top2.values[0] - top2.values[1]) > 1.0, (tag, top2)


if __name__ == "__main__":
    import sys

    print(build_tiny_sensevoice(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny_sensevoice")))
