#!/usr/bin/env python3
"""Road-scene VLMs for edgevlm: data from the scenario simulator, a byte-level BPE tokenizer trained on the
scenario language, a teacher and a distilled student built with transformers' Idefics3 classes (so that the
exported models load in edgevlm unchanged), a per-frame fast hazard head beside the language output, evaluation
against the simulator's exact ground truth, and export in the Hugging Face layout.

  python3 train/roadvlm.py recipe --simdump build-sim/edgevlm-simdump --work /tmp/w --out /tmp/out [--smoke]

runs the whole recipe (see train/README.md): data -> tokenizer -> teacher -> student (distilled) -> baseline
student (same recipe without the teacher) -> held-out evaluation of all three -> export of the student (and
golden tensors for edgevlm's parity test). Phases checkpoint into --work and a rerun resumes where it stopped.
Runs under torchrun too (DDP over every GPU of the host: each rank keeps its own copy of the frames on its GPU
and draws its own batches; rank 0 evaluates and exports).

Needs python3 with torch, transformers 5.x, tokenizers, safetensors, numpy and Pillow (the GPU machine has them).
"""
import argparse
import copy
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_golden import (IMAGE_SPECIALS, ROW_COL_SPECIALS, SMOLVLM_CHAT_TEMPLATE,  # noqa: E402
                         TRAINER_SPECIALS, pick_pil_image_processor)

# The canonical description of src/sim (truth.h): fields in this order, "field: value" joined by "; ".
FIELDS = ["light", "pedestrian", "lead", "sign", "construction", "lighting", "weather", "hazard"]
HAZARDS = ["pedestrian", "braking", "cut-in", "red light", "construction"]
DESCRIBE_PROMPT = "Describe the scene."
QA_FRACTION = 0.3  # share of training samples that are a question/answer pair instead of the description

# Model shapes. head_dim 64 everywhere. Tokens per frame: (image / patch / scale)^2.
PRESETS = {
    # ~37 M parameters, 384 px, 576 patches -> 64 visual tokens.
    "teacher": dict(image=384, patch=16, v_hidden=512, v_inter=2048, v_layers=8, v_heads=8, scale=3,
                    t_hidden=384, t_inter=1024, t_layers=6, t_heads=6, t_kv=2),
    # ~6 M parameters, 224 px, 196 patches -> 49 visual tokens; vision FLOPs ~1/25 of the teacher's.
    "student": dict(image=224, patch=16, v_hidden=192, v_inter=768, v_layers=6, v_heads=3, scale=2,
                    t_hidden=256, t_inter=640, t_layers=4, t_heads=4, t_kv=2),
}
SMOKE_PRESETS = {
    "teacher": dict(PRESETS["teacher"], image=96, v_hidden=64, v_inter=128, v_layers=2, v_heads=1,
                    t_hidden=64, t_inter=128, t_layers=2, t_heads=1, t_kv=1),
    "student": dict(PRESETS["student"], image=64, v_hidden=64, v_inter=128, v_layers=2, v_heads=1,
                    t_hidden=64, t_inter=128, t_layers=2, t_heads=1, t_kv=1),
}


def log(*a):
    if RANK == 0:
        print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def run_simdump(exe, out, seed, scenarios, frames, every, size):
    out = Path(out)
    if (out / "meta.json").exists():
        meta = json.loads((out / "meta.json").read_text())
        if meta.get("seed") == seed and meta.get("scenarios") == scenarios and meta.get("width") == size:
            log(f"data: {out} exists ({meta['count']} frames)")
            return
    cmd = [exe, "--seed", str(seed), "--scenarios", str(scenarios), "--frames-per-scenario", str(frames),
           "--every", str(every), "--size", f"{size}x{size}", "--out", str(out), "--quiet"]
    log("data:", " ".join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True)
    log(f"data: {out} in {time.time() - t0:.1f} s")


class Split:
    """A simdump output directory: frames [N, H, W, 3] uint8 (memory-mapped) and one truth record per frame."""

    def __init__(self, d):
        d = Path(d)
        self.meta = json.loads((d / "meta.json").read_text())
        n, h, w = self.meta["count"], self.meta["height"], self.meta["width"]
        self.frames = np.memmap(d / "frames.u8", dtype=np.uint8, mode="r", shape=(n, h, w, 3))
        self.records = [json.loads(line) for line in (d / "truth.jsonl").read_text().splitlines() if line.strip()]
        assert len(self.records) == n, f"{d}: {len(self.records)} truth records for {n} frames"
        self.size = w

    def __len__(self):
        return len(self.records)

    def hazard_matrix(self):
        m = np.zeros((len(self), len(HAZARDS)), dtype=np.float32)
        for i, r in enumerate(self.records):
            for h in r.get("hazards", []):
                if h in HAZARDS:
                    m[i, HAZARDS.index(h)] = 1
        return m


def parse_description(text):
    """Mirror of sim::parse_description: {field: value} for the known fields found."""
    out = {}
    for part in text.split(";"):
        if ":" not in part:
            continue
        k, v = part.split(":", 1)
        k = k.strip().lower()
        if k in FIELDS:
            out[k] = " ".join(v.strip().lower().split())
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer and processor
# ---------------------------------------------------------------------------------------------

def scenario_corpus(splits):
    lines = [DESCRIBE_PROMPT, "User:", "Assistant:", "What is ahead?"]
    for s in splits:
        for r in s.records:
            lines.append(" " + r["description"])
            for qa in r.get("qa", []):
                lines.append(qa["q"])
                lines.append(" " + qa["a"])
    # Every value a field can take, also rare ones (speed limits 30..120, every colour and type).
    lines += [f" speed {v}" for v in range(10, 200, 10)] + [" " + str(d) for d in range(10)]
    return lines


def build_tokenizer(corpus, vocab_size):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[AddedToken(t, special=True, normalized=False) for t in TRAINER_SPECIALS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_SPECIALS + ROW_COL_SPECIALS])
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                 pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                 additional_special_tokens=IMAGE_SPECIALS + ROW_COL_SPECIALS, model_max_length=4096,
                                 clean_up_tokenization_spaces=False, chat_template=SMOLVLM_CHAT_TEMPLATE)
    hf.chat_template = SMOLVLM_CHAT_TEMPLATE
    return hf


def token_ids(hf):
    ids = {k: hf.convert_tokens_to_ids(t) for k, t in
           [("bos", "<|im_start|>"), ("eos", "<end_of_utterance>"), ("pad", "<|im_end|>"), ("image", "<image>"),
            ("fake", "<fake_token_around_image>"), ("global", "<global-img>")]}
    return ids


def image_processor(size):
    cls = pick_pil_image_processor("Idefics3")
    return cls(do_convert_rgb=True, do_resize=True, size={"longest_edge": size}, resample=1,
               do_image_splitting=False, max_image_size={"longest_edge": size}, do_rescale=True,
               rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
               do_pad=True)


def prompt_prefix(question, n_image_tokens):
    """The prompt text (chat template rendered, image expanded as the Idefics3 processor does without splitting)."""
    chat = (f"<|im_start|>User:<image>{question}<end_of_utterance>\nAssistant:")
    img = "<fake_token_around_image><global-img>" + "<image>" * n_image_tokens + "<fake_token_around_image>"
    return chat.replace("<image>", img, 1)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def make_config(p, vocab, ids):
    from transformers import Idefics3Config, Idefics3VisionConfig, LlamaConfig
    vcfg = Idefics3VisionConfig(hidden_size=p["v_hidden"], intermediate_size=p["v_inter"],
                                num_hidden_layers=p["v_layers"], num_attention_heads=p["v_heads"], num_channels=3,
                                image_size=p["image"], patch_size=p["patch"], hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6, attention_dropout=0.0)
    tcfg = LlamaConfig(vocab_size=vocab, hidden_size=p["t_hidden"], intermediate_size=p["t_inter"],
                       num_hidden_layers=p["t_layers"], num_attention_heads=p["t_heads"],
                       num_key_value_heads=p["t_kv"], head_dim=p["t_hidden"] // p["t_heads"], hidden_act="silu",
                       max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                       bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                       attention_bias=False, mlp_bias=False)
    cfg = Idefics3Config(vision_config=vcfg, text_config=tcfg, scale_factor=p["scale"], image_token_id=ids["image"],
                         tie_word_embeddings=True, pad_token_id=ids["pad"], use_cache=True)
    cfg.text_config.vocab_size = vocab
    cfg.image_token_id = ids["image"]
    return cfg


class TemporalAdapter(nn.Module):
    """This key frame's visual tokens cross-attend to the previous key frame's (src/models/temporal_adapter.h):
    x' = x + tanh(gate) * Wo attention(Wq LN(x), Wk LN(m), Wv LN(m)). gate starts at 0: the identity."""

    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.norm_x = nn.LayerNorm(hidden, eps=1e-5)
        self.norm_m = nn.LayerNorm(hidden, eps=1e-5)
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.k = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, hidden, bias=False)
        self.o = nn.Linear(hidden, hidden, bias=False)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, m):
        B, T, H = x.shape
        d = H // self.heads
        q = self.q(self.norm_x(x)).view(B, T, self.heads, d).transpose(1, 2)
        mm = self.norm_m(m)
        k = self.k(mm).view(B, m.shape[1], self.heads, d).transpose(1, 2)
        v = self.v(mm).view(B, m.shape[1], self.heads, d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, H)
        return x + torch.tanh(self.gate) * self.o(a)


class RoadVLM(nn.Module):
    """An Idefics3ForConditionalGeneration plus the fast hazard head on the mean-pooled vision features."""

    def __init__(self, cfg, attn="sdpa"):
        super().__init__()
        from transformers import Idefics3ForConditionalGeneration
        self.vlm = Idefics3ForConditionalGeneration._from_config(cfg, attn_implementation=attn)
        self.fast_head = nn.Linear(cfg.vision_config.hidden_size, len(HAZARDS))
        self.image_token_id = cfg.image_token_id
        self.tokens_per_image = (cfg.vision_config.image_size // cfg.vision_config.patch_size // cfg.scale_factor) ** 2
        self.temporal = None

    def add_temporal(self, heads):
        self.temporal = TemporalAdapter(self.vlm.config.text_config.hidden_size, heads).to(
            next(self.parameters()).device)

    def encode(self, pix_u8):
        """pix_u8 [B, S, S, 3] uint8 -> (vision last hidden state [B, P, Hv], connector output [B, T, Ht])."""
        pv = (pix_u8.permute(0, 3, 1, 2).float() * (1 / 255) - 0.5) / 0.5
        base = self.vlm.model
        vis = base.vision_model(pixel_values=pv.to(next(self.parameters()).dtype)).last_hidden_state
        return vis, base.connector(vis)

    def memory(self, prev_u8):
        """The previous key frame's image embeddings (the adapter's memory; no gradient through it)."""
        with torch.no_grad():
            return self.encode(prev_u8)[1].detach()

    def forward(self, pix_u8, ids, attn_mask, prev_u8=None):
        vis, img = self.encode(pix_u8)
        if self.temporal is not None and prev_u8 is not None:
            img = self.temporal(img, self.memory(prev_u8))
        emb = self.vlm.get_input_embeddings()(ids)
        mask = (ids == self.image_token_id).unsqueeze(-1)
        emb = emb.masked_scatter(mask, img.to(emb.dtype).reshape(-1, emb.shape[-1]))
        h = self.vlm.model.text_model(inputs_embeds=emb, attention_mask=attn_mask).last_hidden_state
        logits = self.vlm.lm_head(h)
        hazard_logits = self.fast_head(vis.mean(1))
        return logits, hazard_logits, img


def count_params(m):
    return sum(p.numel() for p in m.vlm.parameters())


def vision_gflops(p):
    n = (p["image"] // p["patch"]) ** 2
    e, f, L = p["v_hidden"], p["v_inter"], p["v_layers"]
    per_layer = 2 * n * (4 * e * e + 2 * e * f) + 4 * n * n * e
    return (2 * n * 3 * p["patch"] ** 2 * e + L * per_layer) * 1e-9


# ---------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------

class Sequences:
    """Every training sequence of a split for one model (its image-token count): candidate 0 of frame i is the
    description, the others its QA pairs. ids/labels [C, L] on the device; frame[C]; first[N] (candidate index of
    frame i's description) and nqa[N]."""

    def __init__(self, split, hf, ids, n_img, device):
        cache = {}

        def enc(s):
            if s not in cache:
                cache[s] = hf(s, add_special_tokens=False)["input_ids"]
            return cache[s]

        rows, frames, first, nqa = [], [], [], []
        for i, r in enumerate(split.records):
            first.append(len(rows))
            cands = [(DESCRIBE_PROMPT, r["description"])] + [(qa["q"], qa["a"]) for qa in r.get("qa", [])]
            nqa.append(len(cands) - 1)
            for q, a in cands:
                pre = enc(prompt_prefix(q, n_img))
                tgt = enc(" " + a) + [ids["eos"]]
                rows.append((pre, tgt))
                frames.append(i)
        L = max(len(p) + len(t) for p, t in rows)
        C = len(rows)
        idm = np.full((C, L), ids["pad"], dtype=np.int64)
        lab = np.full((C, L), -100, dtype=np.int64)
        att = np.zeros((C, L), dtype=np.int64)
        for c, (p, t) in enumerate(rows):
            seq = p + t
            idm[c, :len(seq)] = seq
            att[c, :len(seq)] = 1
            lab[c, len(p):len(seq)] = t
        self.ids = torch.from_numpy(idm).to(device)
        self.labels = torch.from_numpy(lab).to(device)
        self.attn = torch.from_numpy(att).to(device)
        self.frame = torch.tensor(frames, device=device)
        self.first = torch.tensor(first, device=device)
        self.nqa = torch.tensor(nqa, device=device)
        self.length = L
        self.prefix_desc = enc(prompt_prefix(DESCRIBE_PROMPT, n_img))

    def pick(self, frame_idx, gen):
        """One candidate per frame: the description, or with probability QA_FRACTION one of its QA pairs."""
        qa = torch.rand(frame_idx.shape, device=frame_idx.device, generator=gen) < QA_FRACTION
        nq = self.nqa[frame_idx]
        k = (torch.rand(frame_idx.shape, device=frame_idx.device, generator=gen) * nq.clamp(min=1)).long() + 1
        k = torch.where(qa & (nq > 0), k, torch.zeros_like(k))
        return self.first[frame_idx] + k


def frames_to_device(split, device, chunk=4096):
    out = torch.empty((len(split), split.size, split.size, 3), dtype=torch.uint8, device=device)
    for i in range(0, len(split), chunk):
        out[i:i + chunk] = torch.from_numpy(np.ascontiguousarray(split.frames[i:i + chunk])).to(device)
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def lm_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def target_logits(logits, labels):
    """Logits that predict each label token, in order, flattened [n, V]."""
    sel = labels[:, 1:] != -100
    return logits[:, :-1][sel]


def previous_frames(split, max_gap=10):
    """prev[i, g-1]: the stored frame g steps before frame i in the same scenario (i itself at a scenario start)."""
    n = len(split)
    prev = np.zeros((n, max_gap), dtype=np.int64)
    sc = np.array([r.get("scenario", 0) for r in split.records])
    for g in range(1, max_gap + 1):
        idx = np.arange(n) - g
        ok = (idx >= 0) & (sc[np.clip(idx, 0, None)] == sc)
        prev[:, g - 1] = np.where(ok, idx, np.arange(n))
    return prev


def balance_weights(split, power=0.5, cap=8.0):
    """Sampling probabilities that lift rare field values (a sign, a cut-in, a light that is off): each frame's
    weight is the mean over the description fields of freq(value)^-power, capped at `cap` times the mean."""
    from collections import Counter
    n = len(split)
    w = np.zeros(n)
    for f in FIELDS:
        vals = [parse_description(r["description"]).get(f, "") for r in split.records]
        cnt = Counter(vals)
        w += np.array([cnt[v] / n for v in vals]) ** (-power)
    w /= len(FIELDS)
    w = np.minimum(w, cap * w.mean())
    return w / w.sum()


def train_phase(name, model, data, seqs, hazards, args, budget_s, lr, teacher=None, teacher_data=None,
                teacher_seqs=None, ckpt=None, fixed_steps=0, prev=None, weights=None):
    """Trains `model` for `budget_s` seconds of wall time (or args.steps steps). With a teacher: + KL on the
    teacher's next-token distributions (temperature args.kd_temp) and + feature distillation of the visual
    tokens (student connector output, projected, vs the teacher's pooled to the student's grid). `weights` [N]:
    frames are drawn with these probabilities (balance_weights) instead of uniformly."""
    device = data.device
    model.train()
    proj = None
    if teacher is not None:
        teacher.eval()
        t_h = teacher.vlm.config.text_config.hidden_size
        s_h = model.vlm.config.text_config.hidden_size
        proj = nn.Linear(s_h, t_h).to(device)
    params = list(model.parameters()) + (list(proj.parameters()) if proj is not None else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    total_steps = fixed_steps or args.steps
    skipped = 0
    ddp_model = model
    if WORLD > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    step, start = 0, time.time()
    resumed_hist = []
    if ckpt is not None and ckpt.exists():
        st = torch.load(ckpt, map_location=device)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        if proj is not None and st.get("proj"):
            proj.load_state_dict(st["proj"])
        step = st["step"]
        start -= st["elapsed"]
        resumed_hist, skipped = st.get("hist", []), st.get("skipped", 0)
        log(f"{name}: resumed at step {step} ({st['elapsed']:.0f} s done)")
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + RANK * 7 + step)
    n = data.shape[0]
    bs = args.batch
    warm = 100
    est_steps = total_steps or 0
    hist = list(resumed_hist)
    t_last = t_saved = time.time()

    def save():
        if ckpt is not None and RANK == 0:
            tmp = ckpt.with_suffix(".tmp")
            torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, elapsed=time.time() - start,
                            proj=proj.state_dict() if proj is not None else None, hist=hist, skipped=skipped), tmp)
            tmp.replace(ckpt)  # atomic: a command cut off mid-save leaves the previous checkpoint

    while True:
        elapsed = time.time() - start
        done = (total_steps and step >= total_steps) or (not total_steps and elapsed >= budget_s)
        if WORLD > 1:
            flag = torch.tensor([1.0 if done else 0.0], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            done = flag.item() > 0
        if done:
            break
        # LR: warm-up, then cosine over the (estimated) total.
        if not total_steps:
            rate = step / max(elapsed, 1e-3)
            est_steps = max(step + 1, int(rate * budget_s))
        frac = min(1.0, step / max(est_steps, 1))
        cur_lr = lr * min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        if weights is not None:
            fi = torch.multinomial(weights, bs, replacement=True, generator=gen)
        else:
            fi = torch.randint(0, n, (bs,), device=device, generator=gen)
        ci = seqs.pick(fi, gen)
        ids, lab, att = seqs.ids[ci], seqs.labels[ci], seqs.attn[ci]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            prev_u8 = None
            if prev is not None:
                # The previous key frame 1..10 stored frames (0.1..1 s) back; 15% of the time an unrelated frame,
                # as after a cut, so that the adapter learns to ignore a memory that does not fit.
                g = torch.randint(0, prev.shape[1], (bs,), device=device, generator=gen)
                pi = prev[fi, g]
                cut = torch.rand(bs, device=device, generator=gen) < 0.15
                pi = torch.where(cut, torch.randint(0, n, (bs,), device=device, generator=gen), pi)
                prev_u8 = data[pi]
            logits, hz, img = ddp_model(data[fi], ids, att, prev_u8)
            loss_lm = lm_loss(logits, lab)
            loss_fast = F.binary_cross_entropy_with_logits(hz.float(), hazards[fi])
            loss = loss_lm + 0.5 * loss_fast
            loss_kd = loss_feat = torch.zeros((), device=device)
            if teacher is not None:
                with torch.no_grad():
                    # The teacher reads the same frames at its own resolution and the same candidate texts.
                    tci = teacher_seqs.first[fi] + (ci - seqs.first[fi])
                    t_logits, _, t_img = teacher(teacher_data[fi], teacher_seqs.ids[tci], teacher_seqs.attn[tci])
                    t_sel = target_logits(t_logits, teacher_seqs.labels[tci]).float()
                s_sel = target_logits(logits, lab).float()
                T = args.kd_temp
                loss_kd = F.kl_div(F.log_softmax(s_sel / T, -1), F.log_softmax(t_sel / T, -1), log_target=True,
                                   reduction="batchmean") * T * T
                g_t = int(round(math.sqrt(t_img.shape[1])))
                g_s = int(round(math.sqrt(img.shape[1])))
                tgrid = t_img.float().reshape(bs, g_t, g_t, -1).permute(0, 3, 1, 2)
                tpool = F.adaptive_avg_pool2d(tgrid, g_s).permute(0, 2, 3, 1).reshape(bs, g_s * g_s, -1)
                sp = proj(img.float())
                loss_feat = F.mse_loss(F.layer_norm(sp, sp.shape[-1:]), F.layer_norm(tpool, tpool.shape[-1:]))
                loss = args.kd_alpha * loss_kd + (1 - args.kd_alpha) * loss_lm + 0.5 * loss_fast + \
                    args.feat_beta * loss_feat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not bool(torch.isfinite(norm)) or not bool(torch.isfinite(loss)):
            # A non-finite loss or gradient must not reach the weights (bf16 overflow in a rare batch).
            skipped += 1
            opt.zero_grad(set_to_none=True)
        else:
            opt.step()
        step += 1
        if step % 50 == 0:
            hist.append(dict(step=step, loss=loss.item(), lm=loss_lm.item(), fast=loss_fast.item(),
                             kd=loss_kd.item(), feat=loss_feat.item(), lr=cur_lr, skipped=skipped, elapsed=time.time() - start))
        if time.time() - t_saved > args.ckpt_every_s:
            save()
            t_saved = time.time()
        if time.time() - t_last > 20 or step == 1:
            t_last = time.time()
            log(f"{name}: step {step}/{est_steps} loss {loss.item():.4f} (lm {loss_lm.item():.4f} fast "
                f"{loss_fast.item():.4f} kd {loss_kd.item():.4f} feat {loss_feat.item():.4f}) lr {cur_lr:.2e} skipped {skipped} "
                f"{time.time() - start:.0f}/{budget_s:.0f} s")
    elapsed = time.time() - start
    save()
    log(f"{name}: {step} steps in {elapsed:.0f} s ({step * bs * WORLD / max(elapsed, 1e-3):.0f} samples/s)")
    model.eval()
    return dict(steps=step, seconds=elapsed, batch=bs, world=WORLD, lr=lr, skipped=skipped, history=hist)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def greedy(model, pix_u8, prefix, eos, pad, max_new=64, prev_u8=None):
    """Greedy continuation of the same prefix for every frame of the batch (no KV cache: the prefix is short)."""
    device = pix_u8.device
    B = pix_u8.shape[0]
    ids = torch.tensor(prefix, device=device).unsqueeze(0).repeat(B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    out = [[] for _ in range(B)]
    vis, img = model.encode(pix_u8)
    if model.temporal is not None and prev_u8 is not None:
        img = model.temporal(img, model.memory(prev_u8))
    hz = torch.sigmoid(model.fast_head(vis.mean(1)).float())
    for _ in range(max_new):
        emb = model.vlm.get_input_embeddings()(ids)
        mask = (ids == model.image_token_id).unsqueeze(-1)
        emb = emb.masked_scatter(mask, img.to(emb.dtype).reshape(-1, emb.shape[-1]))
        h = model.vlm.model.text_model(inputs_embeds=emb, attention_mask=torch.ones_like(ids)).last_hidden_state
        nxt = model.vlm.lm_head(h[:, -1]).float().argmax(-1)
        for b in range(B):
            if not done[b]:
                if nxt[b].item() == eos:
                    done[b] = True
                else:
                    out[b].append(nxt[b].item())
        if bool(done.all()):
            break
        ids = torch.cat([ids, torch.where(done, torch.full_like(nxt, pad), nxt).unsqueeze(1)], 1)
    return out, hz


def hazard_metrics(hz, truth, positives=False):
    """Fast-head recall and precision per hazard class at probability 0.5: hz [n, classes] predicted, truth the
    split's hazard matrix (with positives=True also the number of positive frames per class)."""
    fast = {}
    for k, hname in enumerate(HAZARDS):
        pred = hz[:, k] >= 0.5
        tp = float((pred & (truth[:, k] > 0)).sum())
        fp = float((pred & (truth[:, k] == 0)).sum())
        fn = float((~pred & (truth[:, k] > 0)).sum())
        fast[hname] = dict(recall=tp / max(tp + fn, 1), precision=tp / max(tp + fp, 1))
        if positives:
            fast[hname]["positives"] = int(truth[:, k].sum())
    return fast


def evaluate(name, model, data, split, seqs, hf, ids, batch=256, prev=None):
    model.eval()
    n = data.shape[0]
    field_ok = {f: 0 for f in FIELDS}
    exact = 0
    hz_all = []
    samples = []
    for i in range(0, n, batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=data.device.type == "cuda"):
            mem = data[prev[i:i + batch, 0]] if prev is not None else None
            toks, hz = greedy(model, data[i:i + batch], seqs.prefix_desc, ids["eos"], ids["pad"], prev_u8=mem)
        hz_all.append(hz.cpu())
        for b, t in enumerate(toks):
            text = hf.decode(t, skip_special_tokens=True)
            rec = split.records[i + b]
            got, want = parse_description(text), parse_description(rec["description"])
            ok = all(got.get(f) == want.get(f) for f in FIELDS)
            exact += ok
            for f in FIELDS:
                field_ok[f] += got.get(f) == want.get(f)
            if len(samples) < 8:
                samples.append(dict(want=rec["description"], got=text.strip()))
    hz = torch.cat(hz_all).numpy()
    fast = hazard_metrics(hz, split.hazard_matrix(), positives=True)
    per_field = {f: field_ok[f] / n for f in FIELDS}
    res = dict(frames=n, per_field=per_field, mean_field_accuracy=sum(per_field.values()) / len(FIELDS),
               exact_match=exact / n, fast_head=fast, samples=samples)
    log(f"eval {name}: mean field accuracy {res['mean_field_accuracy']:.4f}, exact {res['exact_match']:.4f}; " +
        ", ".join(f"{f} {v:.3f}" for f, v in per_field.items()))
    return res


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export(model, hf, ip, out_dir, card, dtype=torch.bfloat16):
    """Hugging Face layout that transformers and edgevlm both load; the fast head rides along as extra tensors
    (fast_head.weight [5, Hv], fast_head.bias [5]) described in config.json under "edgevlm"."""
    from safetensors.torch import load_file, save_file
    from transformers import Idefics3Processor
    d = Path(out_dir)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    vlm = copy.deepcopy(model.vlm).to(dtype)
    ids = token_ids(hf)
    gc = vlm.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    vlm.save_pretrained(d, max_shard_size="2GB")
    proc = Idefics3Processor(image_processor=ip, tokenizer=hf, image_seq_len=model.tokens_per_image,
                             chat_template=SMOLVLM_CHAT_TEMPLATE)
    proc.save_pretrained(d)
    if not (d / "preprocessor_config.json").exists():
        ip.save_pretrained(d)
    tc_path = d / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = SMOLVLM_CHAT_TEMPLATE
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    st_path = d / "model.safetensors"
    tensors = load_file(str(st_path))
    tensors["fast_head.weight"] = model.fast_head.weight.detach().to(dtype).cpu().contiguous()
    tensors["fast_head.bias"] = model.fast_head.bias.detach().to(dtype).cpu().contiguous()
    if model.temporal is not None:
        for k, v in model.temporal.state_dict().items():
            tensors["temporal." + k] = v.detach().to(dtype).cpu().contiguous()
    save_file(tensors, str(st_path), metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    cfg["edgevlm"] = {
        "fast_head": {"classes": HAZARDS, "input": "vision_last_hidden_state", "pooling": "mean",
                      "activation": "sigmoid", "threshold": 0.5, "weight": "fast_head.weight",
                      "bias": "fast_head.bias"},
        "task": {"describe_prompt": DESCRIBE_PROMPT, "description_fields": FIELDS},
    }
    if model.temporal is not None:
        cfg["edgevlm"]["temporal_adapter"] = {"heads": model.temporal.heads, "eps": 1e-5,
                                              "memory": "previous_keyframe_image_embeddings"}
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (d / "README.md").write_text(card)
    log(f"export: {d}: " + ", ".join(f"{p.name} {p.stat().st_size}" for p in sorted(d.iterdir())))
    return d


@torch.no_grad()
def write_golden(model_dir, split, idx, out_dir, n_new=48):
    """Golden tensors of the exported student as transformers computes them on the CPU in float32 from the
    files on disk: for each frame (saved as PNG) the processor's pixel_values and input_ids, the vision tower
    output, the connector output, the fast head's probabilities, the first-position logits and a greedy
    continuation (full forward per step, no EOS stop)."""
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration
    torch.use_deterministic_algorithms(True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                         attn_implementation="eager").float().eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    raw = load_file(str(Path(model_dir) / "model.safetensors"))
    fw, fb = raw["fast_head.weight"].float(), raw["fast_head.bias"].float()
    cases = []
    for k, i in enumerate(idx):
        png = out / f"frame{k}.png"
        Image.fromarray(np.asarray(split.frames[i])).save(png)
        img = Image.open(png).convert("RGB")
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE_PROMPT}]}]
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
        inputs = proc(text=prompt, images=[[img]], return_tensors="pt")
        pv = inputs["pixel_values"]
        vis = m.model.vision_model(pixel_values=pv[:, 0]).last_hidden_state
        conn = m.model.connector(vis)
        hz = torch.sigmoid(vis.mean(1) @ fw.T + fb)
        ids = inputs["input_ids"]
        res = m(input_ids=ids, pixel_values=pv, attention_mask=torch.ones_like(ids))
        first = res.logits[0, -1].float()
        seq = ids
        toks = []
        for _ in range(n_new):
            lg = m(input_ids=seq, pixel_values=pv, attention_mask=torch.ones_like(seq)).logits[0, -1]
            t = int(lg.argmax())
            toks.append(t)
            seq = torch.cat([seq, torch.tensor([[t]])], 1)
        text = proc.tokenizer.decode(toks, skip_special_tokens=True)
        save_file({"pixel_values": pv[0].contiguous(), "input_ids": ids[0].to(torch.int64).contiguous(),
                   "vision_out": vis[0].contiguous(), "connector_out": conn[0].contiguous(),
                   "fast_head": hz[0].contiguous(), "logits_first": first.contiguous()},
                  str(out / f"case{k}.safetensors"))
        cases.append(dict(image=png.name, prompt=prompt, greedy_tokens=toks, greedy_text=text,
                          truth=split.records[i]["description"], scenario_seed=split.records[i].get("scenario_seed"),
                          frame=split.records[i].get("frame")))
        log(f"golden {k}: {text.strip()!r} (truth {split.records[i]['description']!r})")
    import transformers
    (out / "golden.json").write_text(json.dumps(dict(cases=cases, torch=torch.__version__,
                                                     transformers=transformers.__version__), indent=2) + "\n")


@torch.no_grad()
def write_temporal_golden(model_dir, split, pairs, out_dir, n_new=48):
    """Golden tensors of the temporal adapter (transformers has no such module, so the reference is this file's
    TemporalAdapter in float32 on the CPU over the exported weights): for each (previous, current) frame pair the
    memory (previous frame's connector output), the current frame's connector output, the adapted embeddings, the
    logits at the last prompt position and a greedy continuation from the adapted embeddings."""
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, Idefics3ForConditionalGeneration
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = Idefics3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                         attn_implementation="eager").float().eval()
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    tcfg = cfg["edgevlm"]["temporal_adapter"]
    raw = load_file(str(Path(model_dir) / "model.safetensors"))
    ta = TemporalAdapter(m.config.text_config.hidden_size, tcfg["heads"]).float().eval()
    ta.load_state_dict({k[len("temporal."):]: v.float() for k, v in raw.items() if k.startswith("temporal.")})
    tok = AutoTokenizer.from_pretrained(model_dir)
    n_img = (m.config.vision_config.image_size // m.config.vision_config.patch_size // m.config.scale_factor) ** 2
    ids = torch.tensor([tok(prompt_prefix(DESCRIBE_PROMPT, n_img), add_special_tokens=False)["input_ids"]])
    image_id = m.config.image_token_id

    def connector(i):
        x = torch.from_numpy(np.asarray(split.frames[i])).float().permute(2, 0, 1)[None] / 255
        return m.model.connector(m.model.vision_model(pixel_values=(x - 0.5) / 0.5).last_hidden_state)

    def logits_of(seq, emb_img):
        emb = m.get_input_embeddings()(seq)
        emb = emb.masked_scatter((seq == image_id).unsqueeze(-1), emb_img.reshape(-1, emb.shape[-1]))
        h = m.model.text_model(inputs_embeds=emb, attention_mask=torch.ones_like(seq)).last_hidden_state
        return m.lm_head(h)[0, -1]

    cases = []
    for k, (ip, ic) in enumerate(pairs):
        for tag, i in (("prev", ip), ("cur", ic)):
            Image.fromarray(np.asarray(split.frames[i])).save(out / f"temporal{k}_{tag}.png")
        mem, cur = connector(ip), connector(ic)
        adapted = ta(cur, mem)
        first = logits_of(ids, adapted)
        seq, toks = ids, []
        for _ in range(n_new):
            t = int(logits_of(seq, adapted).argmax())
            toks.append(t)
            seq = torch.cat([seq, torch.tensor([[t]])], 1)
        save_file({"memory": mem[0].contiguous(), "current": cur[0].contiguous(), "adapted": adapted[0].contiguous(),
                   "logits_first": first.contiguous(), "input_ids": ids[0].contiguous()},
                  str(out / f"temporal{k}.safetensors"))
        cases.append(dict(prev=f"temporal{k}_prev.png", cur=f"temporal{k}_cur.png", greedy_tokens=toks,
                          greedy_text=tok.decode(toks, skip_special_tokens=True), gate=float(torch.tanh(ta.gate)),
                          truth=split.records[ic]["description"]))
        log(f"temporal golden {k}: gate {cases[-1]['gate']:.4f}: {cases[-1]['greedy_text'].strip()!r}")
    (out / "temporal.json").write_text(json.dumps(dict(cases=cases), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------

def model_card(results, args, presets):
    r = results
    lines = ["# edgevlm road-scene student", "",
             "A small vision-language model for front-camera road scenes, trained by edgevlm's toolchain "
             "(`train/roadvlm.py recipe`) on frames of its own scenario simulator (`edgevlm sim`), distilled "
             "from a larger teacher trained the same way. Idefics3 architecture (SigLIP vision tower, pixel-shuffle "
             "connector, Llama text model), loadable by transformers and by edgevlm. Weights BF16.", "",
             "## Output", "",
             f"Prompt `{DESCRIBE_PROMPT}` with one {presets['student']['image']}x{presets['student']['image']} frame; "
             "answer: the simulator's canonical description, `field: value` pairs joined by `; ` in the order "
             + ", ".join(FIELDS) + ". It also answers the simulator's questions (e.g. `What colour is the traffic "
             "light?`). A fast head (`fast_head.*`, described in config.json under `edgevlm`) gives per-frame hazard "
             "probabilities for " + ", ".join(HAZARDS) + " from the mean-pooled vision features, without the "
             "language model.", "", "## Recipe", "",
             f"- data: simulator seeds {args.seed}.. ({args.scenarios} random scenarios x {args.frames} frames, "
             f"every {args.every}th frame kept: {r['data']['train_frames']} training frames), held-out seeds "
             f"{args.eval_seed}.. ({r['data']['eval_frames']} frames, never seen in training)",
             f"- tokenizer: byte-level BPE (`tokenizers`), vocab {r['vocab']}, trained on the scenario language",
             "- teacher: " + json.dumps(presets["teacher"]) + f", {r['teacher']['params'] / 1e6:.1f} M parameters, "
             f"{r['teacher']['vision_gflops']:.1f} GFLOP per frame (vision)",
             "- student: " + json.dumps(presets["student"]) + f", {r['student']['params'] / 1e6:.1f} M parameters, "
             f"{r['student']['vision_gflops']:.2f} GFLOP per frame (vision)",
             f"- training: AdamW lr {args.lr_teacher} (teacher) / {args.lr} (students), warm-up 100 steps, cosine "
             f"decay, batch {args.batch}, bf16 autocast, {QA_FRACTION:.0%} QA samples; "
             f"the fast head trained jointly (BCE, weight 0.5); distillation: KL at temperature {args.kd_temp} "
             f"(weight {args.kd_alpha}) + {1 - args.kd_alpha} CE + feature distillation of the visual tokens "
             f"(weight {args.feat_beta}; student connector output projected to the teacher's width vs the teacher's "
             "tokens pooled to the student's grid)",
             f"- steps: teacher {r['teacher']['train']['steps']}, student {r['student']['train']['steps']}, "
             f"baseline {r['baseline']['train']['steps']}; seed {args.seed}"]
    if "temporal_train" in r["student"]:
        lines.append(
            f"- temporal adapter ({args.temporal_heads} heads, gate initialised at 0): "
            f"{'the whole student' if args.temporal_full else 'the adapter alone'} trained "
            f"{r['student']['temporal_train']['steps']} steps at lr {args.lr_temporal} on "
            f"{r['data'].get('temporal_frames', 0)} frames of {args.temporal_scenarios} dense clips (seeds "
            f"{args.temporal_seed}.., every 3rd frame), the memory being a frame 0.1-1 s earlier (15%: an unrelated "
            "frame). Evaluated with the previous stored held-out frame (1 s earlier) as its memory")
    lines += ["",
             "## Results on held-out scenarios (transformers, greedy)", "",
             "| model | mean field accuracy | exact match | " + " | ".join(FIELDS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in FIELDS) + " |"]
    rows = [(k, r[k]["eval"]) for k in ["teacher", "student", "baseline"]]
    if "eval_temporal" in r["student"]:
        rows.append(("student + temporal adapter (shipped)", r["student"]["eval_temporal"]))
    for k, e in rows:
        lines.append(f"| {k} | {e['mean_field_accuracy']:.4f} | {e['exact_match']:.4f} | " +
                     " | ".join(f"{e['per_field'][f]:.3f}" for f in FIELDS) + " |")
    lines += ["", "Fast head (student), recall / precision at 0.5: " +
              ", ".join(f"{h} {v['recall']:.3f}/{v['precision']:.3f}" for h, v in r["student"]["eval"]["fast_head"].items()),
              "", "Produced by `python3 train/roadvlm.py recipe` (see train/README.md); the teacher is not shipped "
              "and is reproduced by the same command.", ""]
    return "\n".join(lines)


def recipe(args):
    if WORLD > 1:
        torch.distributed.init_process_group("nccl")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    presets = SMOKE_PRESETS if args.smoke else PRESETS
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()

    # 1. Data: the same scenarios at the teacher's and the student's resolution; held-out seeds for evaluation.
    sizes = {k: presets[k]["image"] for k in presets}
    if RANK == 0:
        for role, size in sizes.items():
            run_simdump(args.simdump, work / f"train_{size}", args.seed, args.scenarios, args.frames, args.every, size)
            run_simdump(args.simdump, work / f"eval_{size}", args.eval_seed, args.eval_scenarios, args.frames,
                        args.eval_every, size)
        if args.temporal_s > 0:
            # Dense clips (every 3rd frame, 0.1 s apart) for the temporal adapter: it needs previous key frames.
            run_simdump(args.simdump, work / f"temporal_{sizes['student']}", args.temporal_seed,
                        args.temporal_scenarios, args.frames, 3, sizes["student"])
    if WORLD > 1:
        torch.distributed.barrier()
    train = {k: Split(work / f"train_{s}") for k, s in sizes.items()}
    held = {k: Split(work / f"eval_{s}") for k, s in sizes.items()}
    for a, b in [(train["teacher"], train["student"]), (held["teacher"], held["student"])]:
        assert [r["description"] for r in a.records] == [r["description"] for r in b.records], \
            "the two resolutions must render the same scenes"
    log(f"data: {len(train['student'])} training frames, {len(held['student'])} held-out frames")

    # 2. Tokenizer (trained on the training split's language only).
    # Saved on the first run, so that a resumed run (another command) gets exactly the same ids.
    tok_path = work / "tokenizer.json"
    if tok_path.exists():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = build_tokenizer(scenario_corpus([train["student"]]), args.vocab)
        if RANK == 0:
            tok.save(str(tok_path))
    hf = hf_tokenizer(tok)
    ids = token_ids(hf)
    vocab = len(hf)
    log(f"tokenizer: {vocab} tokens; example {hf.tokenize(' ' + train['student'].records[0]['description'])[:24]}")

    results = dict(data=dict(train_frames=len(train["student"]), eval_frames=len(held["student"])), vocab=vocab)
    hazards = {k: torch.from_numpy(train[k].hazard_matrix()).to(device) for k in train}
    models, seqs, data, hseqs, hdata = {}, {}, {}, {}, {}
    for role in ["teacher", "student"]:
        torch.manual_seed(args.seed + (0 if role == "teacher" else 1))
        models[role] = RoadVLM(make_config(presets[role], vocab, ids)).to(device)
        seqs[role] = Sequences(train[role], hf, ids, models[role].tokens_per_image, device)
        data[role] = frames_to_device(train[role], device)
        hseqs[role] = Sequences(held[role], hf, ids, models[role].tokens_per_image, device)
        hdata[role] = frames_to_device(held[role], device)
        results[role] = dict(params=count_params(models[role]), vision_gflops=vision_gflops(presets[role]))
        log(f"{role}: {results[role]['params'] / 1e6:.2f} M parameters, vision {results[role]['vision_gflops']:.2f} "
            f"GFLOP/frame, {models[role].tokens_per_image} visual tokens, sequences of {seqs[role].length}")

    # 3. Teacher.
    weights = {k: torch.from_numpy(balance_weights(train[k])).float().to(device) if args.balance else None
               for k in train}
    results["teacher"]["train"] = train_phase("teacher", models["teacher"], data["teacher"], seqs["teacher"],
                                              hazards["teacher"], args, args.teacher_s, args.lr_teacher,
                                              ckpt=work / "teacher.pt", weights=weights["teacher"])
    if args.stop_after == "teacher":
        # One command of at most 10 minutes per phase: the next command resumes from work/teacher.pt.
        if RANK == 0:
            evaluate("teacher", models["teacher"], hdata["teacher"], held["teacher"], hseqs["teacher"], hf, ids)
        return
    # 4. Student distilled from the teacher; 5. the same student without the teacher.
    results["student"]["train"] = train_phase("student", models["student"], data["student"], seqs["student"],
                                              hazards["student"], args, args.student_s, args.lr,
                                              teacher=models["teacher"],
                                              teacher_data=data["teacher"], teacher_seqs=seqs["teacher"],
                                              ckpt=work / "student.pt", weights=weights["student"])
    torch.manual_seed(args.seed + 1)  # the same initialisation as the student
    base = RoadVLM(make_config(presets["student"], vocab, ids)).to(device)
    results["baseline"] = dict(params=count_params(base), vision_gflops=vision_gflops(presets["student"]))
    # The baseline gets exactly the student's steps (same samples seen), not its wall time.
    results["baseline"]["train"] = train_phase("baseline", base, data["student"], seqs["student"], hazards["student"],
                                               args, args.student_s, args.lr, ckpt=work / "baseline.pt",
                                               fixed_steps=results["student"]["train"]["steps"],
                                               weights=weights["student"])
    # 5b. The temporal adapter, fine-tuned into the distilled student on (previous key frame, frame) pairs.
    # The distilled student as it was before the adapter phase: distillation is judged on it (the baseline gets
    # no adapter phase).
    distilled = copy.deepcopy(models["student"])
    prev_held = None
    if args.temporal_s > 0:
        models["student"].add_temporal(args.temporal_heads)
        if not args.temporal_full:  # only the adapter learns: the distilled student's weights are kept
            models["student"].vlm.requires_grad_(False)
            models["student"].fast_head.requires_grad_(False)
        tsplit = Split(work / f"temporal_{sizes['student']}")
        prev_t = torch.from_numpy(previous_frames(tsplit)).to(device)
        prev_held = torch.from_numpy(previous_frames(held["student"])).to(device)
        results["student"]["temporal_train"] = train_phase(
            "temporal", models["student"], frames_to_device(tsplit, device),
            Sequences(tsplit, hf, ids, models["student"].tokens_per_image, device),
            torch.from_numpy(tsplit.hazard_matrix()).to(device), args, args.temporal_s, args.lr_temporal,
            ckpt=work / "temporal.pt", prev=prev_t)
        results["data"]["temporal_frames"] = len(tsplit)
    if RANK != 0:
        return
    # 6. Held-out evaluation. With an adapter, the shipped student is evaluated with its memory (the previous
    # stored frame of the same scenario) and without it.
    evals = [("teacher", models["teacher"], None), ("student", distilled, None), ("baseline", base, None)]
    if args.temporal_s > 0:
        evals += [("student_temporal", models["student"], prev_held)]
    for role, m, pv in evals:
        key = "teacher" if role == "teacher" else "student"
        res = evaluate(role, m, hdata[key], held[key], hseqs[key], hf, ids, prev=pv)
        if role == "student_temporal":
            results["student"]["eval_temporal"] = res
        else:
            results[role]["eval"] = res
    t, s, b = (results[k]["eval"]["mean_field_accuracy"] for k in ["teacher", "student", "baseline"])
    results["summary"] = dict(teacher=t, student=s, baseline=b, student_over_teacher=s / max(t, 1e-9),
                              distillation_gain=s - b, seconds=time.time() - t_all)
    if "eval_temporal" in results["student"]:
        results["summary"]["student_temporal"] = results["student"]["eval_temporal"]["mean_field_accuracy"]
    log("summary:", json.dumps(results["summary"]))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # 7. Export the student (and the baseline, for side-by-side eval in edgevlm) + golden tensors.
    card = model_card(results, args, presets)
    ip = image_processor(presets["student"]["image"])
    sdir = export(models["student"], hf, ip, out / "road-student", card)
    if args.export_baseline:
        export(base, hf, ip, out / "road-baseline", card.replace("# edgevlm road-scene student",
                                                                   "# edgevlm road-scene student, no-teacher baseline"))
    write_golden(sdir, held["student"], [0, len(held["student"]) // 2], out / "student-golden")
    if models["student"].temporal is not None:
        pv = previous_frames(held["student"])
        cur = [i for i in range(len(held["student"])) if pv[i, 0] != i][:2]
        write_temporal_golden(sdir, held["student"], [(int(pv[i, 0]), i) for i in cur], out / "student-golden")
    log(f"recipe done in {time.time() - t_all:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recipe", help="data, tokenizer, teacher, student, baseline, eval, export")
    r.add_argument("--simdump", required=True, help="path of the edgevlm-simdump program")
    r.add_argument("--work", required=True, help="data and checkpoints (resumable)")
    r.add_argument("--out", required=True, help="exported models, golden tensors, results.json")
    r.add_argument("--smoke", action="store_true", help="tiny shapes and data, a few steps: checks the whole path")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--scenarios", type=int, default=10000)
    r.add_argument("--frames", type=int, default=150, help="frames simulated per scenario")
    r.add_argument("--every", type=int, default=30,
                   help="keep every Nth frame (30: 5 frames a scenario; many scenarios beat many frames of few)")
    r.add_argument("--eval-seed", type=int, default=1_000_000)
    r.add_argument("--eval-scenarios", type=int, default=300)
    r.add_argument("--eval-every", type=int, default=30, help="keep every Nth frame of the held-out scenarios")
    r.add_argument("--temporal-seed", type=int, default=2_000_000)
    r.add_argument("--temporal-scenarios", type=int, default=300, help="dense clips for the temporal adapter")
    r.add_argument("--no-balance", dest="balance", action="store_false",
                   help="draw training frames uniformly (default: rare field values are drawn more often)")
    r.add_argument("--stop-after", choices=["teacher"], default=None,
                   help="stop after this phase (and its evaluation); a later run resumes")
    r.add_argument("--vocab", type=int, default=700)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the student and the baseline")
    r.add_argument("--lr-teacher", type=float, default=4e-4)
    r.add_argument("--steps", type=int, default=0, help="fixed steps per phase (0: the time budgets below)")
    r.add_argument("--teacher-s", type=float, default=440)
    r.add_argument("--student-s", type=float, default=200)
    r.add_argument("--kd-temp", type=float, default=2.0)
    r.add_argument("--kd-alpha", type=float, default=0.5)
    r.add_argument("--feat-beta", type=float, default=1.0)
    r.add_argument("--export-baseline", action="store_true")
    r.add_argument("--ckpt-every-s", type=float, default=60, help="checkpoint interval within a phase")
    r.add_argument("--temporal-s", type=float, default=0, help="fine-tune a temporal adapter into the student (s)")
    r.add_argument("--temporal-heads", type=int, default=4)
    r.add_argument("--lr-temporal", type=float, default=9e-4, help="peak learning rate of the adapter phase")
    r.add_argument("--temporal-full", action="store_true",
                   help="fine-tune the whole student in the adapter phase (default: the adapter alone; the whole "
                        "student overfits the 300 dense clips and loses accuracy)")
    args = ap.parse_args()
    if args.cmd == "recipe":
        if args.smoke:
            args.scenarios, args.frames, args.eval_scenarios, args.vocab = 12, 30, 4, 400
            args.eval_every, args.temporal_scenarios = 9, 3
            args.steps, args.batch = 20, 16
            args.temporal_heads = 1
        recipe(args)


if __name__ == "__main__":
    main()
