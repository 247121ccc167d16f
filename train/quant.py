#!/usr/bin/env python3
"""INT8 quantisation of the road-scene student (issue 6): the PyTorch twin of edgevlm's INT8 Linear
(src/kernels/ref/ref_quant.h), post-training quantisation (PTQ, with and without SmoothQuant), quantisation-aware
training (QAT) by self-distillation, export to the runtime's "edgevlm-int8/1" model files, and golden tensors for
the C++ INT8 parity test.

  python3 train/quant.py all --simdump S --model models/road-student --work /tmp/w --out /tmp/o [--smoke]
  CUDA_VISIBLE_DEVICES= python3 train/quant.py golden --model models/road-student-int8 --out tests/fixtures/quant-golden
  python3 train/quant.py all ... --control --steps 1408   # controls: float fine-tuning (+ PTQ), KL-only QAT
  python3 train/quant.py selftest [--ref-dump D]   # CPU: the arithmetic against its definition (and ref_quant.cpp)

THE ARITHMETIC (ref_quant.h's rules, matched operation by operation; every step is IEEE f32 round-to-nearest-even):
- a row v[0..K) (a weight row, or an activation row = one token) is quantised as
    t = v * (1 / smooth)   for activations (the f32 reciprocal first, then one f32 product; ref_quant.h step 1),
    t = w * smooth         for weights (one f32 product),
    amax = max_k |t|;  scale = amax / 127 (f32 division);  a row with a NaN/Inf gets scale NaN and q = 0;
    a row with scale < FLT_MIN (amax == 0 in particular) gets scale 0 and q = 0;
    otherwise inv = 1 / scale (f32 division) and q = clamp(round_half_even(t * inv), -127, 127).
  So we MULTIPLY BY THE RECIPROCAL of the scale (and of the smoothing factor), as ref_quant.h does; divisions are
  tensor / tensor (CUDA turns `tensor / python_float` into a multiplication by the reciprocal).
- y[m, n] = fmaf(float(acc[m, n]), sx[m] * sw[n], bias[n] or 0) with acc = sum_k qx qw exact: the integer-valued
  f32 matmul is exact (|acc| <= 127 * 127 * 768 < 2^24, every partial sum an integer; TF32 also holds the integers
  exactly), sx * sw is one f32 product, and the fused multiply-add is emulated exactly in float64 (the product of
  two f32 is exact in f64; a TwoSum error term settles the one double-rounding case). That exact path runs whenever
  no gradient is needed (evaluation, export checks, goldens). Training uses the unfused acc * (sx * sw) + bias
  (differentiable; at most ~1 ulp of |y| plus 1 ulp of |bias| from the runtime, as ref_quant.h states).
- Straight-through estimator: q = a + (round(a) - a).detach() with a = t * inv and the scales detached; its value
  is exactly the integer (r - a is exact by Sterbenz's lemma), its gradient that of a. So training sees the inference
  values, with d y / d x = (dequantised W), d y / d W = (dequantised x).
- Quantised layers (the default "mixed" plan): every q/k/v/out_proj, fc1, fc2 of the vision tower and every
  q/k/v/o_proj, gate/up/down_proj of the text model. Float (BF16 in the file): the patch embedding, the connector,
  the temporal adapter, the fast head, embeddings / tied lm_head, norms; attention softmax in float.
- SmoothQuant (alpha 0.5): s[k] = max|X[:, k]|^alpha / max_n |W[n, k]|^(1 - alpha) per quantised Linear (its own
  weight; activation maxima per input channel over every token of calibration frames: simulator seeds 3000000..,
  the float student teacher-forced on the frames' canonical descriptions).

The file format "edgevlm-int8/1": for each quantised Linear with weight name P.weight: P.weight I8 [N, K] (q),
P.weight_scale F32 [N], P.input_smooth F32 [K] (only with smoothing), P.bias unchanged (BF16); every other tensor as
in the source (BF16); config.json "edgevlm" gets "quantization" (format, method, plan, smoothquant_alpha, training,
measured). train/README.md, section "quant.py", is the specification.
"""
import argparse
import copy
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prune as pr  # noqa: E402
import roadvlm as rv  # noqa: E402
from roadvlm import DESCRIBE_PROMPT, log, prompt_prefix  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FORMAT = "edgevlm-int8/1"
QMAX = 127
FLT_MIN = 1.1754943508222875e-38  # 2^-126
VISION_INT8 = re.compile(r"model\.vision_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")
TEXT_INT8 = re.compile(r"model\.text_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")
PLANS = ("mixed", "vision", "text")  # mixed: both sets (the default); vision / text: one set (ablations)
CALIB_SEED = 3_000_000
GOLDEN_LINEARS = ["model.vision_model.encoder.layers.0.self_attn.q_proj", "model.text_model.layers.0.mlp.down_proj"]
GOLDEN_LINEAR_ROWS = 8


# ---------------------------------------------------------------------------------------------
# The INT8 Linear (ref_quant.h)
# ---------------------------------------------------------------------------------------------

def quantize_rows(t):
    """ref_quant.h steps 2-5 on each row of t [R, K] (f32, the smoothing already applied). Returns (q [R, K] f32
    holding integers in [-127, 127], scale [R] f32). With t.requires_grad, q is the straight-through estimate:
    the same values, the gradient of t * inv (scales detached)."""
    td = t.detach()
    finite = torch.isfinite(td).all(-1, keepdim=True)
    amax = td.abs().amax(-1, keepdim=True)
    scale = amax / torch.full_like(amax, float(QMAX))  # f32 division, tensor by tensor
    ok = finite & (scale >= FLT_MIN)
    safe = torch.where(ok, scale, torch.ones_like(scale))
    inv = torch.ones_like(safe) / safe  # f32 division (ref_quant.h: inv = 1.0f / scale)
    a = t * inv  # one f32 product
    r = torch.clamp(torch.round(a.detach()), -QMAX, QMAX)  # round half to even
    r = torch.where(ok, r, torch.zeros_like(r))
    q = a + (r - a).detach() if t.requires_grad else r
    scale = torch.where(ok, scale, torch.where(finite, torch.zeros_like(scale), torch.full_like(scale, float("nan"))))
    return q, scale.squeeze(-1)


def smooth_activations(x, smooth):
    """t = x * (1 / smooth) (ref_quant.h step 1: the f32 reciprocal, then one f32 product)."""
    if smooth is None:
        return x
    return x * (torch.ones_like(smooth) / smooth)


def quantize_weight(w, smooth=None):
    """w [N, K] (any float dtype) -> (q [N, K] f32 integers, scale [N] f32) of w * smooth (ref quantize_rows_i8)."""
    t = w.float()
    if smooth is not None:
        t = t * smooth
    return quantize_rows(t)


def fma_f32(a, p, b=None):
    """round_to_f32(a * p + b) exactly as C's fmaf, for f32 tensors a, p (same shape) and b (broadcast) or None."""
    prod = a.double() * p.double()  # exact: two 24-bit significands
    if b is None:
        return prod.float()
    bd = b.double().expand_as(prod)
    s = prod + bd
    bb = s - prod
    e = (prod - (s - bb)) + (bd - bb)  # TwoSum: prod + b == s + e exactly
    r = s.float()
    rd = r.double()
    toward = torch.where(s > rd, torch.full_like(r, float("inf")), torch.full_like(r, float("-inf")))
    o = torch.nextafter(r, toward)
    # Only when s is exactly halfway between two f32 (and e != 0) does rounding s differ from rounding s + e.
    mid = (s != rd) & ((rd + o.double()) * 0.5 == s)
    hi, lo = torch.maximum(r, o), torch.minimum(r, o)
    return torch.where(mid & (e > 0), hi, torch.where(mid & (e < 0), lo, r))


def int8_linear(x, qw, sw, bias=None, smooth=None, exact=None):
    """edgevlm's INT8 Linear on x [..., K]: dynamic per-token activation quantisation, the exact integer product,
    y = fmaf(acc, sx * sw, bias). qw [N, K] f32 integers (or the straight-through estimate), sw [N] f32.
    exact: fused multiply-add emulated exactly (default: when no gradient is needed)."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()
    qx, sx = quantize_rows(smooth_activations(x2, smooth))
    acc = qx @ qw.t()  # integer-valued f32: exact
    p = sx.unsqueeze(1) * sw.unsqueeze(0)  # one f32 product, as ref_quant.h's sx[m] * sw[n]
    b = bias.float() if bias is not None else None
    if exact is None:
        exact = not (torch.is_grad_enabled() and (acc.requires_grad or (b is not None and b.requires_grad)))
    if exact:
        y = fma_f32(acc.detach(), p, None if b is None else b.detach().unsqueeze(0))
    else:
        y = acc * p.detach()
        if b is not None:
            y = y + b
    return y.reshape(*shape[:-1], qw.shape[0])


class QuantLinear(nn.Linear):
    """An nn.Linear whose forward is edgevlm's INT8 Linear (see int8_linear). Weights: quantised from the current
    self.weight at every call (training, PTQ), or frozen: the q / scale of an int8 file (buffers qweight, wscale).
    smooth: SmoothQuant factors [K] or None. enabled False: the plain float Linear (calibration)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("smooth", None)
        self.register_buffer("qweight", None)
        self.register_buffer("wscale", None)
        self.enabled = True

    @classmethod
    def from_linear(cls, lin, smooth=None):
        q = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        q.weight = lin.weight
        q.bias = lin.bias
        if smooth is not None:
            q.smooth = smooth.detach().float().to(lin.weight.device).clone()
        return q

    def freeze(self, qweight, wscale, smooth=None):
        """Uses these int8 weights (any integer or float tensor [N, K]) and scales [N] from now on."""
        dev = self.weight.device
        self.qweight = qweight.to(dev).float()
        self.wscale = wscale.to(dev).float()
        self.smooth = None if smooth is None else smooth.to(dev).float()
        with torch.no_grad():  # the float matrix they stand for: W = sw q / smooth (only for reference)
            w = self.wscale.unsqueeze(1) * self.qweight
            self.weight.copy_(w if self.smooth is None else w / self.smooth)

    def quantized_weight(self):
        if self.qweight is not None:
            return self.qweight, self.wscale
        return quantize_weight(self.weight, self.smooth)

    def forward(self, x):
        if not self.enabled:
            return super().forward(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            qw, sw = self.quantized_weight()
            return int8_linear(x, qw, sw, self.bias, self.smooth)

    def extra_repr(self):
        return super().extra_repr() + f", int8, smooth={self.smooth is not None}, frozen={self.qweight is not None}"


def linear_names(model):
    """{file weight prefix P: module} for every nn.Linear of a RoadVLM whose weight is a tensor of its own in the
    file (the tied lm_head is not: it is embed_tokens)."""
    out = {}
    emb = model.vlm.get_input_embeddings().weight
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        p = name[len("vlm."):] if name.startswith("vlm.") else name
        if p == "lm_head" and mod.weight.data_ptr() == emb.data_ptr():
            continue
        out[p] = mod
    return out


def make_plan(model, plan="mixed"):
    """{P: "int8" | "bf16"} over every Linear of the model (linear_names)."""
    if plan not in PLANS:
        raise ValueError(f"plan {plan!r}: one of {PLANS}")
    out = {}
    for p in linear_names(model):
        v = VISION_INT8.fullmatch(p) is not None
        t = TEXT_INT8.fullmatch(p) is not None
        q = (v or t) if plan == "mixed" else (v if plan == "vision" else t)
        out[p] = "int8" if q else "bf16"
    return out


def quantize_model(model, plan, smooth=None):
    """Replaces (in place) every Linear that plan marks int8 by a QuantLinear sharing its parameters. smooth:
    {P: factors [K]} or None. Returns the model."""
    names = linear_names(model)
    for p, kind in plan.items():
        if kind != "int8":
            continue
        mod = names[p]
        full = ("vlm." + p) if not p.startswith(("fast_head", "temporal.")) else p
        parent_name, _, child = full.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        s = None if smooth is None else smooth[p]
        setattr(parent, child, QuantLinear.from_linear(mod, s) if not isinstance(mod, QuantLinear) else mod)
    return model


def quant_modules(model):
    return {p: m for p, m in linear_names(model).items() if isinstance(m, QuantLinear)}


# ---------------------------------------------------------------------------------------------
# SmoothQuant calibration
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def activation_absmax(model, data, seqs, names, batch=64):
    """Per input channel max |x| of each Linear in names (file prefixes) over every token: the float model
    teacher-forced on each frame's canonical description (text Linears: the padding positions left out)."""
    mods = linear_names(model)
    amax = {p: torch.zeros(mods[p].in_features, device=data.device) for p in names}
    state = {}
    hooks = []
    for p in names:
        def hook(mod, inp, p=p):
            x = inp[0].float()
            if p.startswith("model.text_model.") and state.get("mask") is not None:
                x = x[state["mask"]]
            amax[p] = torch.maximum(amax[p], x.reshape(-1, x.shape[-1]).abs().amax(0))
        hooks.append(mods[p].register_forward_pre_hook(hook))
    model.eval()
    try:
        for i in range(0, data.shape[0], batch):
            c = seqs.first[i:i + batch]
            state["mask"] = seqs.attn[c].bool()
            model(data[i:i + batch], seqs.ids[c], seqs.attn[c])
    finally:
        for h in hooks:
            h.remove()
    return amax


def smoothquant_factors(model, amax, alpha=0.5):
    """s[k] = max|X[:, k]|^alpha / max_n |W[n, k]|^(1 - alpha) (both clamped to >= 1e-5), f32, per Linear."""
    mods = linear_names(model)
    out = {}
    for p, ax in amax.items():
        aw = mods[p].weight.detach().float().abs().amax(0)
        s = ax.clamp(min=1e-5).pow(alpha) / aw.clamp(min=1e-5).pow(1 - alpha)
        assert bool(torch.isfinite(s).all()) and bool((s > 0).all()), p
        out[p] = s.float()
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation: field accuracy and agreement with the float model
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(name, model, data, split, tok, ids, hseqs, prev=None, batch=750, ref=None):
    """Held-out evaluation in float32 (no autocast): greedy description of each frame (roadvlm's fields, exact
    match, fast head at 0.5), and teacher-forced next-token predictions on the true descriptions. ref: the float
    model's result in the same mode: then agreement = share of target positions with the same top-1 token,
    kl = mean KL(float || this) per position, greedy_same = share of frames with the identical greedy text,
    fast_head_same = share of (frame, hazard) decisions equal to the float model's."""
    t0 = time.time()
    model.eval()
    n = data.shape[0]
    prefix = hseqs.prefix_desc
    texts, toks_all, hz_all, am, lps = [], [], [], [], []
    for i in range(0, n, batch):
        vis, img = model.encode(data[i:i + batch])
        if prev is not None and model.temporal is not None:
            img = model.temporal(img, model.encode(data[prev[i:i + batch]])[1])
        toks = pr.greedy_embeds(model, img, prefix, ids["eos"], ids["pad"])
        toks_all += toks
        texts += [tok.decode(t, skip_special_tokens=True) for t in toks]
        hz_all.append(torch.sigmoid(model.fast_head(vis.mean(1)).float()))
        c = hseqs.first[i:i + batch]
        lab = hseqs.labels[c]
        lg = pr.lm_logits(model, img, hseqs.ids[c], hseqs.attn[c])[:, :-1][lab[:, 1:] != -100].float()
        am.append(lg.argmax(-1))
        lps.append(F.log_softmax(lg, -1))
    hz = torch.cat(hz_all)
    res = dict(frames=n, temporal=prev is not None, **pr.score_descriptions(texts, split, hz.cpu().numpy()))
    keep = dict(argmax=torch.cat(am), logp=torch.cat(lps), toks=toks_all, hz=hz >= 0.5)
    if ref is not None:
        rk = ref["_keep"]
        res["agreement_top1"] = float((keep["argmax"] == rk["argmax"]).float().mean())
        res["kl_to_float"] = float((rk["logp"].exp() * (rk["logp"] - keep["logp"])).sum(-1).mean())
        res["greedy_same"] = sum(a == b for a, b in zip(keep["toks"], rk["toks"])) / n
        res["fast_head_same"] = float((keep["hz"] == rk["hz"]).float().mean())
        res["target_positions"] = int(keep["argmax"].numel())
    res["seconds"] = time.time() - t0
    log(f"eval {name}: mean field accuracy {res['mean_field_accuracy']:.4f}, exact {res['exact_match']:.4f}" +
        (f", top-1 agreement {res['agreement_top1']:.4f}, KL {res['kl_to_float']:.4g}, same greedy "
         f"{res['greedy_same']:.4f}, same fast head {res['fast_head_same']:.4f}" if ref is not None else "") +
        f" ({res['seconds']:.1f} s)")
    res["_keep"] = keep
    return res


def public(res):
    return {k: v for k, v in res.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------
# QAT: self-distillation with fake quantisation on
# ---------------------------------------------------------------------------------------------

def qat_train(model, teacher, data, seqs, weights, prev_train, args, seconds, device):
    """Fine-tunes `model` (QuantLinear layers active) for `seconds` of wall time (or args.steps steps): loss
    kd_alpha * KL(teacher || model) on the next-token distributions of the target tokens (temperature kd_temp) +
    (1 - kd_alpha) * CE + fast_beta * BCE of the fast head to the teacher's probabilities. The teacher is the
    frozen float student (bf16 autocast). The student runs in float32 (TF32 matmuls; the int8 products stay exact)
    unless args.amp (bf16 autocast around the float parts). On temporal_frac of the batches both run the temporal
    adapter with the previous stored frame as memory (15%: an unrelated frame)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    gen = torch.Generator(device=device).manual_seed(args.seed * 1000 + 7)
    rng = random.Random(args.seed * 1000 + 7)
    bs, warm, kd_t = args.batch, args.warmup, args.kd_temp
    n_train = data.shape[0]
    step, skipped, hist, n_mem = 0, 0, [], 0
    start = t_last = time.time()
    model.train()
    teacher.eval()
    while True:
        elapsed = time.time() - start
        if (args.steps and step >= args.steps) or (not args.steps and elapsed >= seconds):
            break
        est = args.steps or max(step + 1, int(step / max(elapsed, 1e-3) * seconds))
        frac = min(1.0, step / max(est, 1))
        cur_lr = args.lr * min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        fi = torch.multinomial(weights, bs, replacement=True, generator=gen)
        ci = seqs.pick(fi, gen)
        ids_b, lab, att = seqs.ids[ci], seqs.labels[ci], seqs.attn[ci]
        prev_u8 = None
        if model.temporal is not None and rng.random() < args.temporal_frac:
            pi = prev_train[fi]
            cut = torch.rand(bs, device=device, generator=gen) < 0.15
            pi = torch.where(cut, torch.randint(0, n_train, (bs,), device=device, generator=gen), pi)
            prev_u8 = data[pi]
            n_mem += 1
        pix = data[fi]
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            t_logits, t_hz, _ = teacher(pix, ids_b, att, prev_u8)
            t_sel = rv.target_logits(t_logits, lab).float()
            t_prob = torch.sigmoid(t_hz.float())
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and args.amp):
            logits, hz, _ = model(pix, ids_b, att, prev_u8)
            loss_lm = rv.lm_loss(logits, lab)
            s_sel = rv.target_logits(logits, lab).float()
            loss_kd = F.kl_div(F.log_softmax(s_sel / kd_t, -1), F.log_softmax(t_sel / kd_t, -1), log_target=True,
                               reduction="batchmean") * kd_t * kd_t
            loss_fast = F.binary_cross_entropy_with_logits(hz.float(), t_prob)
            loss = args.kd_alpha * loss_kd + (1 - args.kd_alpha) * loss_lm + args.fast_beta * loss_fast
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not bool(torch.isfinite(norm)) or not bool(torch.isfinite(loss)):
            skipped += 1
            opt.zero_grad(set_to_none=True)
        else:
            opt.step()
        step += 1
        if step % 25 == 0 or step == 1:
            hist.append(dict(step=step, loss=loss.item(), lm=loss_lm.item(), kd=loss_kd.item(), fast=loss_fast.item(),
                             lr=cur_lr, elapsed=time.time() - start))
        if time.time() - t_last > 20 or step == 1:
            t_last = time.time()
            log(f"qat: step {step}/{est} loss {loss.item():.4f} (lm {loss_lm.item():.4f} kd {loss_kd.item():.4f} "
                f"fast {loss_fast.item():.4f}) lr {cur_lr:.2e} skipped {skipped} {time.time() - start:.0f}/"
                f"{seconds:.0f} s")
    elapsed = time.time() - start
    model.eval()
    log(f"qat: {step} steps in {elapsed:.0f} s ({step * bs / max(elapsed, 1e-3):.0f} samples/s), "
        f"{n_mem} batches with the temporal memory")
    return dict(steps=step, seconds=elapsed, batch=bs, lr=args.lr, warmup=warm, schedule="linear warm-up, cosine to 5%",
                student_precision="bf16 autocast" if args.amp else "float32 (TF32 matmuls)",
                optimizer="AdamW (0.9, 0.98), no weight decay, grad clip 1.0", kd_alpha=args.kd_alpha,
                kd_temp=kd_t, fast_beta=args.fast_beta, temporal_frac=args.temporal_frac, temporal_batches=n_mem,
                skipped=skipped, samples_per_s=step * bs / max(elapsed, 1e-3), history=hist)


# ---------------------------------------------------------------------------------------------
# Export and loading of "edgevlm-int8/1" model directories
# ---------------------------------------------------------------------------------------------

def export_int8(model, src_dir, out_dir, plan, quantization, card_extra=""):
    """The model (QuantLinear layers per plan) in src_dir's layout: every non-weight file copied, model.safetensors
    with src's tensor names: P.weight I8 + P.weight_scale F32 (+ P.input_smooth F32) for the int8 Linears, every
    other tensor in its source dtype (bf16); config.json "edgevlm" gets "quantization"."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    src, d = Path(src_dir), Path(out_dir)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json"):
            shutil.copy2(f, d / f.name)
    raw = load_file(str(src / "model.safetensors"))
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        meta = dict(f.metadata() or {"format": "pt"})
    meta["edgevlm_quantization"] = FORMAT
    qmods = quant_modules(model)
    assert sorted(qmods) == sorted(p for p, v in plan.items() if v == "int8"), "model and plan disagree"
    vsd = model.vlm.state_dict()
    fh = model.fast_head.state_dict()
    tp = model.temporal.state_dict() if model.temporal is not None else {}
    new = {}
    for k, v in raw.items():
        p = k[:-len(".weight")] if k.endswith(".weight") else None
        if p in qmods:
            q, s = qmods[p].quantized_weight()
            q = q.detach()
            assert bool((q == q.round()).all()) and float(q.abs().max()) <= QMAX, p
            assert tuple(q.shape) == tuple(v.shape), (k, q.shape, v.shape)
            new[k] = q.to(torch.int8).cpu().contiguous()
            new[p + ".weight_scale"] = s.detach().float().cpu().contiguous()
            if qmods[p].smooth is not None:
                new[p + ".input_smooth"] = qmods[p].smooth.detach().float().cpu().contiguous()
            continue
        if k.startswith("fast_head."):
            t = fh[k[len("fast_head."):]]
        elif k.startswith("temporal."):
            t = tp[k[len("temporal."):]]
        else:
            t = vsd[k]
        assert tuple(t.shape) == tuple(v.shape), (k, t.shape, v.shape)
        new[k] = t.detach().to(v.dtype).cpu().contiguous().clone()
    save_file(new, str(d / "model.safetensors"), metadata=meta)
    cfg = json.loads((src / "config.json").read_text())
    cfg.setdefault("edgevlm", {})["quantization"] = quantization
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if card_extra and (d / "README.md").exists():
        (d / "README.md").write_text((d / "README.md").read_text().rstrip() + "\n\n" + card_extra.strip() + "\n")
    log(f"export: {d}: " + ", ".join(f"{p.name} {p.stat().st_size}" for p in sorted(d.iterdir())))
    return d


def load_int8_student(model_dir, device="cpu", attn="sdpa"):
    """An "edgevlm-int8/1" directory as a RoadVLM (float32) whose int8 Linears are QuantLinear layers frozen to
    the file's q / scale / smoothing; every other tensor from the file (bf16 -> f32)."""
    from safetensors.torch import load_file
    from transformers import Idefics3Config
    model_dir = Path(model_dir)
    cfg = Idefics3Config.from_pretrained(model_dir)
    ev = json.loads((model_dir / "config.json").read_text()).get("edgevlm", {})
    qcfg = ev.get("quantization", {})
    assert qcfg.get("format") == FORMAT, f"{model_dir}: quantization.format {qcfg.get('format')!r}, want {FORMAT!r}"
    plan = qcfg["plan"]
    m = rv.RoadVLM(cfg, attn=attn)
    if "temporal_adapter" in ev:
        m.add_temporal(ev["temporal_adapter"]["heads"])
    raw = load_file(str(model_dir / "model.safetensors"))
    qset = {p for p, v in plan.items() if v == "int8"}
    assert set(plan) == set(linear_names(m)), "plan does not list every Linear of the model"
    quantize_model(m, plan)
    sd = {}
    for k, v in raw.items():
        if k.startswith(("fast_head.", "temporal.")):
            continue
        if k.endswith((".weight_scale", ".input_smooth")) or (k.endswith(".weight") and k[:-7] in qset):
            continue
        sd[k] = v.float()
    missing, unexpected = m.vlm.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} | {p + ".weight" for p in qset}, missing
    qm = quant_modules(m)
    for p in qset:
        w = raw[p + ".weight"]
        assert w.dtype == torch.int8, (p, w.dtype)
        qm[p].freeze(w, raw[p + ".weight_scale"], raw.get(p + ".input_smooth"))
    emb = m.vlm.get_input_embeddings().weight
    if m.vlm.lm_head.weight.data_ptr() != emb.data_ptr():
        with torch.no_grad():
            m.vlm.lm_head.weight.copy_(emb)
    m.fast_head.load_state_dict({"weight": raw["fast_head.weight"].float(), "bias": raw["fast_head.bias"].float()})
    if m.temporal is not None:
        m.temporal.load_state_dict({k[len("temporal."):]: v.float() for k, v in raw.items()
                                    if k.startswith("temporal.")})
    return m.float().to(device).eval(), raw


def quantization_config(model, plan, method, alpha, training=None, measured=None):
    qm = quant_modules(model)
    smooth = any(m.smooth is not None for m in qm.values())
    return {"format": FORMAT, "weights": "int8 symmetric per output channel",
            "activations": "int8 symmetric per token, dynamic", "method": method, "plan": plan,
            "smoothquant_alpha": alpha if smooth else None, "training": training, "measured": measured,
            "rules": "src/kernels/ref/ref_quant.h; train/quant.py is the PyTorch twin (train/README.md, quant.py)",
            "notes": "plan lists every Linear with a weight of its own in model.safetensors; lm_head is tied to "
                     "model.text_model.embed_tokens.weight and stays bf16; the patch embedding (a convolution), "
                     "norms and attention softmax stay float"}


@torch.no_grad()
def same_outputs(a, b, data, hseqs, n=200):
    """Max |diff| of the connector outputs and the teacher-forced logits of two models on the first n frames."""
    _, ia = a.encode(data[:n])
    _, ib = b.encode(data[:n])
    c = hseqs.first[:n]
    la = pr.lm_logits(a, ia, hseqs.ids[c], hseqs.attn[c])
    lb = pr.lm_logits(b, ib, hseqs.ids[c], hseqs.attn[c])
    return dict(connector_maxabs=float((ia - ib).abs().max()), logits_maxabs=float((la - lb).abs().max()))


# ---------------------------------------------------------------------------------------------
# Golden tensors for the C++ INT8 parity test
# ---------------------------------------------------------------------------------------------

def _tensor_list(d):
    names = {torch.float32: "F32", torch.int32: "I32", torch.int64: "I64", torch.int8: "I8"}
    return [dict(name=k, dtype=names[v.dtype], shape=list(v.shape)) for k, v in d.items()]


@torch.no_grad()
def make_quant_golden(model_dir, frames_dir, out_dir, pixel_ref="../student-golden", n_new=48, model_ref=None,
                      threads=4):
    """Golden tensors of the int8 model in model_dir as this file computes it (float32, CPU, eager attention,
    transformers' modules with QuantLinear layers frozen to the file's int8 weights), for the frames of
    roadvlm.write_golden (frames_dir/case{0,1}.safetensors: pixel_values and input_ids, not stored again)."""
    from safetensors.torch import load_file, save_file
    import transformers
    torch.use_deterministic_algorithms(True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model_dir, frames_dir, out = Path(model_dir), Path(frames_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.safetensors"):
        f.unlink()
    m, raw = load_int8_student(model_dir, "cpu", attn="eager")
    tok = pr.load_tokenizer(model_dir)
    n_img = m.tokens_per_image
    ids = torch.tensor([tok(prompt_prefix(DESCRIBE_PROMPT, n_img), add_special_tokens=False)["input_ids"]])
    qm = quant_modules(m)
    checks, cases = {}, []
    margins = {p: {"min_distance_to_half": float("inf"), "within_1e-3": 0, "values": 0} for p in qm}
    cap = {}

    def hook_for(p):
        def hook(mod, inp, outp):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            t = smooth_activations(x, mod.smooth)
            amax = t.abs().amax(-1, keepdim=True)
            sc = amax / torch.full_like(amax, float(QMAX))
            a = t * (torch.ones_like(sc) / torch.where(sc >= FLT_MIN, sc, torch.ones_like(sc)))
            dist = ((a - a.floor()) - 0.5).abs()  # distance of t * inv from a rounding tie (x.5)
            mg = margins[p]
            mg["min_distance_to_half"] = min(mg["min_distance_to_half"], float(dist.min()))
            mg["within_1e-3"] += int((dist < 1e-3).sum())
            mg["values"] += dist.numel()
            if p in GOLDEN_LINEARS and p not in cap:
                qx, sx = quantize_rows(t[:GOLDEN_LINEAR_ROWS])
                cap[p] = dict(x=x[:GOLDEN_LINEAR_ROWS].contiguous(), qx=qx.to(torch.int8).contiguous(),
                              sx=sx.contiguous(), y=outp.detach().float().reshape(-1, outp.shape[-1])
                              [:GOLDEN_LINEAR_ROWS].contiguous())
        return hook

    hooks = [qm[p].register_forward_hook(hook_for(p)) for p in qm]
    ref_float = {}
    for k in range(2):
        ref = load_file(str(frames_dir / f"case{k}.safetensors"))
        pv = ref["pixel_values"].float()
        assert pv.dim() == 4, pv.shape
        checks[f"frame{k}_prompt_ids_equal_student_golden"] = ref["input_ids"].tolist() == ids[0].tolist()
        assert checks[f"frame{k}_prompt_ids_equal_student_golden"]
        vis = m.vlm.model.vision_model(pixel_values=pv).last_hidden_state
        conn = m.vlm.model.connector(vis)
        hz = torch.sigmoid(m.fast_head(vis.mean(1)))
        lg = pr.lm_logits(m, conn, ids)[0, -1].float()
        seq, toks, mins = ids, [], []
        for _ in range(n_new):
            l2 = pr.lm_logits(m, conn, seq)[0, -1].float()
            top = torch.topk(l2, 2).values
            mins.append(float(top[0] - top[1]))
            t = int(l2.argmax())
            toks.append(t)
            seq = torch.cat([seq, torch.tensor([[t]])], 1)
        own = pr.pruned_vision_forward(m, pv, [], 1.0)
        checks[f"frame{k}_reference_loop_vs_transformers_vision_maxabs"] = float((own["grid"] - vis).abs().max())
        checks[f"frame{k}_reference_loop_vs_transformers_connector_maxabs"] = float(
            (own["connector_out"] - conn).abs().max())
        # How far the int8 model is from the float student (the shipped fixtures): relative max |diff|.
        for name, mine in (("vision_out", vis[0]), ("connector_out", conn[0]), ("logits_first", lg)):
            r = ref[name].float()
            checks[f"frame{k}_{name}_vs_float_student_rel"] = float((mine - r).abs().max() / r.abs().max())
        ref_float[k] = int(ref["logits_first"].argmax())
        top2 = torch.topk(lg, 2).values
        t = {"vision_out": vis.contiguous(), "connector_out": conn.contiguous(), "fast_head": hz.contiguous(),
             "logits_first": lg.contiguous(), "input_ids": ids[0].to(torch.int64).contiguous()}
        name = f"frame{k}"
        save_file(t, str(out / f"{name}.safetensors"))
        cases.append(dict(name=name, frame=k, file=f"{name}.safetensors", tensors=_tensor_list(t),
                          pixel_values=dict(file=f"{pixel_ref}/case{k}.safetensors", tensor="pixel_values",
                                            dtype="F32", shape=list(pv.shape)),
                          image=f"{pixel_ref}/frame{k}.png", logits_first_margin=float(top2[0] - top2[1]),
                          greedy_tokens=toks, greedy_min_margin=min(mins),
                          greedy_text=tok.decode(toks, skip_special_tokens=True)))
        log(f"quant golden {name}: {cases[-1]['greedy_text'].strip()!r} (min margin {min(mins):.4f})")
    for h in hooks:
        h.remove()
    lin = {}
    lin_doc = []
    for i, p in enumerate(GOLDEN_LINEARS):
        c = cap[p]
        for key in ("x", "qx", "sx", "y"):
            lin[f"linear{i}_{key}"] = c[key]
        # Checks of the capture: quantize_rows + the exact fma give back the module's output bit for bit.
        qw, sw = qm[p].quantized_weight()
        y2 = int8_linear(c["x"], qw, sw, qm[p].bias, qm[p].smooth)
        checks[f"linear{i}_recomputed_equal"] = bool(torch.equal(y2, c["y"]))
        lin_doc.append(dict(index=i, module=p, weight=p + ".weight", weight_scale=p + ".weight_scale",
                            input_smooth=(p + ".input_smooth") if qm[p].smooth is not None else None,
                            bias=(p + ".bias") if qm[p].bias is not None else None, frame=0,
                            rows=f"the first {GOLDEN_LINEAR_ROWS} rows (tokens) of this Linear's input in frame0's "
                                 "forward (vision: patches 0..7; text: prompt positions 0..7)"))
    save_file(lin, str(out / "linears.safetensors"))
    qcfg = json.loads((model_dir / "config.json").read_text())["edgevlm"]["quantization"]
    md = model_dir.resolve()
    if model_ref is None:
        model_ref = (dict(model=str(md.relative_to(REPO)), model_path_base="repository root")
                     if md.is_relative_to(REPO) else dict(model=os.path.relpath(md, out.resolve()),
                                                          model_path_base="this directory"))
    meta = dict(
        **model_ref, format=FORMAT, method=qcfg.get("method"), smoothquant_alpha=qcfg.get("smoothquant_alpha"),
        dtype="float32", device=f"cpu ({threads} threads, deterministic algorithms)",
        attention="eager (transformers' modules)",
        torch=torch.__version__, transformers=transformers.__version__,
        made_by="CUDA_VISIBLE_DEVICES= python3 train/quant.py golden --model " + model_ref["model"] +
                " --out tests/fixtures/quant-golden",
        arithmetic="each int8 Linear is ref_quant.h's linear_i8_dynamic: t = x * (1/smooth); scale = amax/127; "
                   "q = clamp(round_half_even(t * (1/scale)), -127, 127); y = fmaf(float(sum q_x q_w), sx * sw, "
                   "bias), emulated exactly; every other op float32 (eager attention, softmax in f32)",
        frames_from="tests/fixtures/student-golden: held-out scenarios (seed 1000000..), stored frames 0 and 750 "
                    "of roadvlm's held-out split (student-golden/golden.json gives their scenario seeds)",
        cases=cases, linear_cases=dict(file="linears.safetensors", cases=lin_doc), checks=checks,
        rounding_margins={p: v for p, v in margins.items()},
        tensors_doc={
            "vision_out": "[1, 196, 192] F32: vision tower output after post_layernorm (int8 Linears inside)",
            "connector_out": "[1, 49, 256] F32: connector (pixel shuffle + bf16 projection, float) of vision_out",
            "fast_head": "[1, 5] F32: sigmoid(fast_head(mean over patches of vision_out))",
            "logits_first": "[488] F32: logits at the last prompt position, connector_out at the 49 <image> "
                            "positions of input_ids (int8 text Linears); greedy_tokens: 48 argmax steps, full "
                            "forward, no EOS stop; greedy_min_margin: smallest top-1 minus top-2 logit gap",
            "input_ids": "[L] I64: the prompt (equal to student-golden's)",
            "linear{i}_x": "[8, K] F32: the input rows of linear i (linear_cases) in frame0's forward",
            "linear{i}_qx": "[8, K] I8: their quantised values (ref quantize_activations_i8 with the file's "
                            "input_smooth if any)",
            "linear{i}_sx": "[8] F32: their scales",
            "linear{i}_y": "[8, N] F32: the Linear's output (ref linear_i8_dynamic with the file's weight, "
                           "weight_scale, bias): bit-exact",
        },
        rounding_margins_doc="per int8 Linear over both frames' forwards (golden prompt only): the smallest "
                             "distance of t * inv from a rounding tie (k + 0.5) and how many of the values lie "
                             "within 1e-3 of one: where a C++ forward can round to a neighbour integer after f32 "
                             "differences upstream of the Linear")
    (out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    log("quant golden checks: " + json.dumps(checks))
    log(f"quant golden: {out}: " + ", ".join(f"{p.name} {p.stat().st_size}" for p in sorted(out.iterdir())) +
        f"; {total} bytes")
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads_before)
    return meta


# ---------------------------------------------------------------------------------------------
# The whole run: PTQ, PTQ + SmoothQuant, QAT, export, goldens
# ---------------------------------------------------------------------------------------------

def set_exact(device, exact):
    """Evaluation runs in full float32 (TF32 off: the runtime's f32); training may use TF32 for the float parts."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not exact
        torch.backends.cudnn.allow_tf32 = not exact


def results_table(res):
    ev = res["evals"]
    rows = [("float (BF16 weights, f32 compute)", "float", "float+temporal"),
            ("PTQ int8", "ptq", "ptq+temporal"),
            (f"PTQ int8 + SmoothQuant a={res['args']['alpha']}", "ptq_sq", "ptq_sq+temporal"),
            ("QAT int8 (exported file, reloaded)", "qat", "qat+temporal")]
    lines = ["| model | mean field accuracy | exact match | top-1 agreement | KL to float | same greedy text | "
             "same fast head | with temporal memory |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, k, kt in rows:
        if k not in ev:
            continue
        e = ev[k]
        agr = (f"{e['agreement_top1']:.4f} | {e['kl_to_float']:.4f} | {e['greedy_same']:.4f} | "
               f"{e['fast_head_same']:.4f}") if "agreement_top1" in e else "1 | 0 | 1 | 1"
        tmp = f"{ev[kt]['mean_field_accuracy']:.4f}" if kt in ev else "-"
        lines.append(f"| {label} | {e['mean_field_accuracy']:.4f} | {e['exact_match']:.4f} | {agr} | {tmp} |")
    for k in ("ptq vision-only", "ptq text-only"):
        if k in ev:
            e = ev[k]
            lines.append(f"| {k} (ablation) | {e['mean_field_accuracy']:.4f} | {e['exact_match']:.4f} | "
                         f"{e['agreement_top1']:.4f} | {e['kl_to_float']:.4f} | {e['greedy_same']:.4f} | "
                         f"{e['fast_head_same']:.4f} | - |")
    return "\n".join(lines) + "\n"


def run_all(args):
    t_all = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_exact(device, True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model_dir, work, out = Path(args.model), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    size = json.loads((model_dir / "config.json").read_text())["vision_config"]["image_size"]
    rv.run_simdump(args.simdump, work / f"train_{size}", args.seed, args.scenarios, args.frames, args.every, size)
    rv.run_simdump(args.simdump, work / f"eval_{size}", args.eval_seed, args.eval_scenarios, args.frames,
                   args.eval_every, size)
    rv.run_simdump(args.simdump, work / f"calib_{size}", args.calib_seed, args.calib_scenarios, args.frames,
                   args.calib_every, size)
    train, held, calib = (rv.Split(work / f"{s}_{size}") for s in ("train", "eval", "calib"))
    log(f"data: {len(train)} training, {len(held)} held-out, {len(calib)} calibration frames "
        f"({time.time() - t_all:.0f} s)")
    import transformers
    tok = pr.load_tokenizer(model_dir)
    ids = rv.token_ids(tok)
    fmodel, _ = pr.load_student(model_dir, device)
    fmodel.requires_grad_(False)
    n_img = fmodel.tokens_per_image
    hseqs = rv.Sequences(held, tok, ids, n_img, device)
    cseqs = rv.Sequences(calib, tok, ids, n_img, device)
    hdata, cdata = rv.frames_to_device(held, device), rv.frames_to_device(calib, device)
    prev_held = torch.from_numpy(rv.previous_frames(held)[:, 0]).to(device)
    res = dict(model=str(model_dir), device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
               versions=dict(torch=torch.__version__, transformers=transformers.__version__),
               data=dict(train=dict(seed=args.seed, scenarios=args.scenarios, every=args.every, frames=len(train)),
                         held_out=dict(seed=args.eval_seed, scenarios=args.eval_scenarios, every=args.eval_every,
                                       frames=len(held)),
                         calibration=dict(seed=args.calib_seed, scenarios=args.calib_scenarios,
                                          every=args.calib_every, frames=len(calib))),
               args={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
               command="python3 train/quant.py " + " ".join(sys.argv[1:]), evals={}, checks={}, timing={})
    ev = res["evals"]

    def save():
        (out / "results_quant.json").write_text(json.dumps(
            {**res, "evals": {k: public(v) for k, v in ev.items()}}, indent=2) + "\n")

    def run_eval(key, model, temporal=False):
        ref = None if key in ("float", "float+temporal") else ev["float+temporal" if temporal else "float"]
        ev[key] = evaluate(key, model, hdata, held, tok, ids, hseqs, prev=prev_held if temporal else None, ref=ref)
        if ref is not None:
            ev[key].pop("_keep")  # only the float results are references
        save()
        return ev[key]

    # Float model (the reference of agreement), and prune.py's bf16-autocast evaluation as a data check.
    def have_time(n_evals):
        """Whether n_evals more evaluations still leave QAT at least args.qat_floor_s before the deadline."""
        if not args.deadline_s:
            return True
        te = max(e["seconds"] for e in ev.values())
        left = args.deadline_s - (time.time() - t_all) - n_evals * te - (2 * te + args.reserve_s) - 20
        ok = left >= args.qat_floor_s
        if not ok:
            log(f"skipping {n_evals} evaluations: {left:.0f} s would be left for QAT (eval {te:.0f} s)")
        return ok

    run_eval("float", fmodel)
    if args.control:
        return run_control(args, res, run_eval, save, fmodel, train, tok, ids, model_dir, out, device, t_all)
    temporal = have_time(6)
    if temporal:
        run_eval("float+temporal", fmodel, temporal=True)
    if not args.smoke and have_time(5):
        chk = pr.evaluate_pruned("float (prune.evaluate_pruned, bf16 autocast)", fmodel, hdata, held, tok, ids)
        res["checks"]["float_bf16_autocast_prune_evaluate"] = chk["mean_field_accuracy"]
    plan = make_plan(fmodel, "mixed")
    res["plan_counts"] = dict(int8=sum(v == "int8" for v in plan.values()), bf16=sum(v == "bf16" for v in plan.values()))
    # PTQ: the shipped weights, fake-quantised.
    ptq = quantize_model(copy.deepcopy(fmodel), plan)
    run_eval("ptq", ptq)
    # PTQ + SmoothQuant: activation maxima of the float model on the calibration frames.
    t0 = time.time()
    amax = activation_absmax(fmodel, cdata, cseqs, [p for p, v in plan.items() if v == "int8"])
    smooth = smoothquant_factors(fmodel, amax, args.alpha)
    res["calibration"] = dict(seconds=time.time() - t0, frames=len(calib), alpha=args.alpha,
                              act_absmax={p: dict(max=float(a.max()), median=float(a.median()))
                                          for p, a in amax.items()},
                              smooth_range={p: [float(s.min()), float(s.max())] for p, s in smooth.items()})
    ptq_sq = quantize_model(copy.deepcopy(fmodel), plan, smooth)
    run_eval("ptq_sq", ptq_sq)
    if temporal and have_time(3):
        run_eval("ptq+temporal", ptq, temporal=True)
        run_eval("ptq_sq+temporal", ptq_sq, temporal=True)
    # Ablations: which half of the plan costs the accuracy.
    for key, pl in (("ptq vision-only", "vision"), ("ptq text-only", "text")):
        if have_time(2):
            run_eval(key, quantize_model(copy.deepcopy(fmodel), make_plan(fmodel, pl)))
    # The PTQ exports (not committed: for comparison), each reloaded and checked against the in-memory model.
    for key, m in (("ptq", ptq), ("ptq_sq", ptq_sq)):
        q = quantization_config(m, plan, "ptq", args.alpha,
                                measured={k: ev[k]["mean_field_accuracy"] for k in (key, key + "+temporal") if k in ev})
        d = export_int8(m, model_dir, out / f"road-student-int8-{key.replace('_', '-')}", plan, q)
        back, _ = load_int8_student(d, device)
        res["checks"][f"{key}_export_reloaded_vs_in_memory"] = same_outputs(m, back, hdata, hseqs)
        del back
    use_sq = {"on": True, "off": False}.get(args.qat_smooth)
    if use_sq is None:
        use_sq = ev["ptq_sq"]["mean_field_accuracy"] > ev["ptq"]["mean_field_accuracy"] + 0.002
    res["qat_smoothquant"] = use_sq
    del ptq, ptq_sq
    eval_s = [ev[k]["seconds"] for k in ev]
    te = max(eval_s) if eval_s else 10
    res["timing"]["before_qat"] = time.time() - t_all

    # QAT.
    seqs = rv.Sequences(train, tok, ids, n_img, device)
    data = rv.frames_to_device(train, device)
    sample_w = torch.from_numpy(rv.balance_weights(train)).float().to(device)
    prev_train = torch.from_numpy(rv.previous_frames(train)[:, 0]).to(device)
    qat = quantize_model(copy.deepcopy(fmodel), plan, smooth if use_sq else None)
    qat.requires_grad_(True)
    for m in quant_modules(qat).values():  # the smoothing factors stay fixed (buffers)
        assert m.qweight is None
    reserve = 2 * te + args.reserve_s
    budget = args.seconds
    if args.deadline_s:
        budget = max(args.min_seconds, min(args.seconds, args.deadline_s - (time.time() - t_all) - reserve))
    log(f"qat: budget {budget:.0f} s (deadline {args.deadline_s} s, {time.time() - t_all:.0f} s spent, reserve "
        f"{reserve:.0f} s), smoothquant {use_sq}")
    set_exact(device, False)
    train_res = qat_train(qat, fmodel, data, seqs, sample_w, prev_train, args, budget, device)
    set_exact(device, True)
    res["train"] = train_res
    del data, seqs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    training = (f"QAT from {model_dir.name}: {train_res['steps']} steps, batch {train_res['batch']}, AdamW lr "
                f"{args.lr} (warm-up {args.warmup}, cosine to 5%), {train_res['seconds']:.0f} s on "
                f"{res['device']}; loss {args.kd_alpha} KL(T {args.kd_temp}) to the float student + "
                f"{1 - args.kd_alpha:g} CE + {args.fast_beta} fast-head BCE to the float student's probabilities; "
                f"fake quant (train/quant.py QuantLinear, straight-through) on every int8 Linear"
                f"{', SmoothQuant factors fixed from calibration' if use_sq else ''}; "
                f"{args.temporal_frac:.0%} of the batches with the temporal memory")
    q = quantization_config(qat, plan, "qat", args.alpha, training=training)
    qdir = export_int8(qat, model_dir, out / "road-student-int8", plan, q)
    back, _ = load_int8_student(qdir, device)
    res["checks"]["qat_export_reloaded_vs_in_memory"] = same_outputs(qat, back, hdata, hseqs)
    run_eval("qat", back)
    if "float+temporal" in ev:
        run_eval("qat+temporal", back, temporal=True)
    measured = {k: round(ev[k]["mean_field_accuracy"], 4) for k in
                ("float", "float+temporal", "ptq", "ptq+temporal", "ptq_sq", "ptq_sq+temporal", "qat", "qat+temporal")
                if k in ev}
    measured.update({f"agreement_top1_{k}": round(ev[k]["agreement_top1"], 4) for k in ("ptq", "ptq_sq", "qat")})
    measured["held_out"] = (f"{len(held)} frames, simulator seeds {args.eval_seed}.. ({args.eval_scenarios} "
                            f"scenarios, every {args.eval_every}th frame), greedy, float32 compute, train/quant.py")
    cfg_path = qdir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["edgevlm"]["quantization"]["measured"] = measured
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    res["summary"] = measured
    card = ("## INT8 (edgevlm-int8/1, train/quant.py)\n\n"
            f"This directory is `{model_dir.name}` quantised for edgevlm's INT8 runtime: int8 weights (symmetric, per "
            "output channel: `P.weight` I8 + `P.weight_scale` F32" +
            (", `P.input_smooth` F32 SmoothQuant factors" if use_sq else "") +
            ") for every attention and MLP Linear of the vision tower and the text model, int8 activations "
            "(symmetric, per token, dynamic); the patch embedding, connector, temporal adapter, fast head, "
            "embeddings and norms stay BF16. transformers cannot load it (int8 tensors). " + training +
            ".\n\nHeld-out scenarios (" + measured["held_out"] + "):\n\n" + results_table(
                {**res, "evals": ev}))
    (qdir / "README.md").write_text((qdir / "README.md").read_text().rstrip() + "\n\n" + card)
    save()
    res["timing"]["before_golden"] = time.time() - t_all
    # Goldens of the committed model (CPU, float32).
    frames = Path(args.golden_frames)
    if (frames / "case0.safetensors").exists():
        meta = make_quant_golden(qdir, frames, out / "quant-golden", pixel_ref="../student-golden",
                                 model_ref=dict(model="models/road-student-int8", model_path_base="repository root"))
        res["checks"]["golden"] = meta["checks"]
    res["timing"]["total"] = time.time() - t_all
    save()
    log("summary:\n" + results_table({**res, "evals": ev}))
    log(f"quant all done in {time.time() - t_all:.0f} s")


def run_control(args, res, run_eval, save, fmodel, train, tok, ids, model_dir, out, device, t_all):
    """Controls for the QAT result, with QAT's recipe and a fixed number of steps (args.steps, the QAT run's):
    (1) the same fine-tuning with fake quantisation off, rounded to bf16 (what its export would hold), then PTQ of
    it: separates what QAT gains from what the extra training gains; (2) QAT with pure self-distillation
    (kd_alpha 1: no CE on the labels), exported and reloaded."""
    seqs = rv.Sequences(train, tok, ids, fmodel.tokens_per_image, device)
    data = rv.frames_to_device(train, device)
    sample_w = torch.from_numpy(rv.balance_weights(train)).float().to(device)
    prev_train = torch.from_numpy(rv.previous_frames(train)[:, 0]).to(device)
    plan = make_plan(fmodel, "mixed")
    res["control"] = {}
    ft = copy.deepcopy(fmodel).requires_grad_(True)
    set_exact(device, False)
    res["control"]["float_ft_train"] = qat_train(ft, fmodel, data, seqs, sample_w, prev_train, args, args.seconds,
                                                 device)
    set_exact(device, True)
    with torch.no_grad():
        for p in ft.parameters():
            p.copy_(p.bfloat16().float())
    run_eval("float-ft", ft)
    run_eval("float-ft+ptq", quantize_model(copy.deepcopy(ft), plan))
    del ft
    a2 = copy.copy(args)
    a2.kd_alpha = 1.0
    qk = quantize_model(copy.deepcopy(fmodel), plan).requires_grad_(True)
    set_exact(device, False)
    res["control"]["qat_kd_train"] = qat_train(qk, fmodel, data, seqs, sample_w, prev_train, a2, args.seconds, device)
    set_exact(device, True)
    q = quantization_config(qk, plan, "qat", args.alpha, training="control: QAT with kd_alpha 1")
    d = export_int8(qk, model_dir, out / "road-student-int8-qat-kd", plan, q)
    back, _ = load_int8_student(d, device)
    run_eval("qat-kd", back)
    res["timing"]["total"] = time.time() - t_all
    save()
    log("control summary: " + ", ".join(f"{k} {v['mean_field_accuracy']:.4f}" +
                                         (f" (agreement {v['agreement_top1']:.4f})" if "agreement_top1" in v else "")
                                         for k, v in res["evals"].items()))


# ---------------------------------------------------------------------------------------------
# Self-test of the arithmetic (CPU, no transformers needed)
# ---------------------------------------------------------------------------------------------

def selftest(args):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # quantize_rows against a float64 reading of the rules (on values where f64 and f32 agree: exact checks below).
    x = torch.randn(64, 96, generator=g) * torch.logspace(-3, 2, 96)
    x[3] = 0
    x[5, 7] = float("inf")
    q, s = quantize_rows(x)
    assert s[3] == 0 and bool((q[3] == 0).all()) and math.isnan(float(s[5])) and bool((q[5] == 0).all())
    ok = torch.ones(64, dtype=torch.bool)
    ok[[3, 5]] = False
    amax = x[ok].abs().amax(-1)
    assert torch.equal(s[ok], amax / torch.full_like(amax, 127.0))
    assert float(q[ok].abs().max()) == 127 and bool((q == q.round()).all())
    # STE: the same values, gradient of t * inv.
    xr = x[ok].clone().requires_grad_(True)
    qs, ss = quantize_rows(xr)
    assert torch.equal(qs.detach(), q[ok]) and torch.equal(ss, s[ok])
    qs.sum().backward()
    assert torch.allclose(xr.grad, (1 / s[ok]).unsqueeze(1).expand_as(xr), rtol=1e-6)
    # fma emulation against exact rational arithmetic on random and crafted tie cases.
    from fractions import Fraction
    a = torch.randint(-2 ** 23, 2 ** 23, (4000,), generator=g).float()
    p = (torch.rand(4000, generator=g) * 1e-3).float()
    b = (torch.randn(4000, generator=g) * torch.logspace(-12, 2, 4000)).float()
    # ties: 3 * (0.5 + 2^-24) = 1.5 + 2^-23 + 2^-24 lies exactly halfway between two f32; b nudges it (or not)
    a[:8] = 3.0
    p[:8] = 0.5 + 2.0 ** -24
    b[:8] = torch.tensor([1e-30, -1e-30, 0.0, 2.0 ** -60, -(2.0 ** -60), 1e-38, -1e-38, 1e-20])
    y = fma_f32(a, p, b)
    for i in range(a.numel()):
        exact = Fraction(float(a[i])) * Fraction(float(p[i])) + Fraction(float(b[i]))
        want = _round_f32(exact)
        assert float(y[i]) == want, (i, float(a[i]), float(p[i]), float(b[i]), float(y[i]), want)
    # int8_linear: the exact path equals the integer definition; the training path is within a few ulp.
    xx = torch.randn(2, 5, 64, generator=g)
    w = torch.randn(48, 64, generator=g) * 0.1
    bias = torch.randn(48, generator=g)
    sm = torch.rand(64, generator=g) + 0.5
    qw, sw = quantize_weight(w, sm)
    y = int8_linear(xx, qw, sw, bias, sm)
    qx, sx = quantize_rows(smooth_activations(xx.reshape(-1, 64), sm))
    acc = (qx.long() @ qw.long().t())
    want = torch.tensor([[_round_f32(Fraction(int(acc[m, n])) * Fraction(float(sx[m] * sw[n])) +
                                     Fraction(float(bias[n]))) for n in range(48)] for m in range(10)])
    assert torch.equal(y.reshape(10, 48), want.float()), float((y.reshape(10, 48) - want).abs().max())
    yt = int8_linear(xx, qw, sw, bias, sm, exact=False)
    assert float((yt - y).abs().max()) <= 4 * float(torch.finfo(torch.float32).eps) * float(y.abs().max()) + 1e-6
    # QuantLinear: live, frozen and STE paths agree; gradients reach the weight.
    lin = nn.Linear(64, 48)
    ql = QuantLinear.from_linear(lin, sm)
    y1 = ql(xx)
    qw, sw = ql.quantized_weight()
    f = QuantLinear.from_linear(copy.deepcopy(lin))
    f.freeze(qw.to(torch.int8), sw, sm)
    with torch.no_grad():
        y2 = f(xx)
        y3 = ql(xx)
    assert torch.equal(y2, y3), float((y2 - y3).abs().max())
    y1.sum().backward()
    assert lin.weight.grad is not None and float(lin.weight.grad.abs().sum()) > 0
    log("selftest: quantize_rows, STE, fma emulation, int8_linear, QuantLinear: all passed")
    if args.ref_dump:
        ref_compare(args.ref_dump, "cpu")
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False
            ref_compare(args.ref_dump, "cuda")
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 holds the integers exactly as well
            ref_compare(args.ref_dump, "cuda")
            torch.backends.cuda.matmul.allow_tf32 = False


def _round_f32(fr):
    """The f32 nearest to a Fraction (ties to even), as a Python float."""
    import struct
    f = float(fr)  # nearest double
    c = struct.unpack("f", struct.pack("f", f))[0]  # may double-round: fix by checking neighbours exactly
    cands = sorted({c, float(np.nextafter(np.float32(c), np.float32(np.inf))),
                    float(np.nextafter(np.float32(c), np.float32(-np.inf)))})
    from fractions import Fraction
    best = min(cands, key=lambda v: (abs(Fraction(v) - fr), struct.unpack("I", struct.pack("f", v))[0] & 1))
    return best


def ref_compare(path, device="cpu"):
    """Compares with a dump of the C++ reference (src/kernels/ref/ref_quant.cpp built into a small driver; see
    train/README.md): raw little-endian arrays written by the driver."""
    d = Path(path)
    meta = json.loads((d / "meta.json").read_text())
    M, K, N = meta["M"], meta["K"], meta["N"]

    def arr(name, dt, shape):
        return torch.from_numpy(np.fromfile(d / name, dtype=dt).reshape(shape).copy()).to(device)

    x, w, sm, b = arr("x.f32", np.float32, (M, K)), arr("w.f32", np.float32, (N, K)), arr("smooth.f32", np.float32, (K,)), \
        arr("bias.f32", np.float32, (N,))
    for tag, s in (("plain", None), ("smooth", sm)):
        qw_c, sw_c = arr(f"qw_{tag}.i8", np.int8, (N, K)), arr(f"sw_{tag}.f32", np.float32, (N,))
        qx_c, sx_c = arr(f"qx_{tag}.i8", np.int8, (M, K)), arr(f"sx_{tag}.f32", np.float32, (M,))
        y_c = arr(f"y_{tag}.f32", np.float32, (M, N))
        qw, sw = quantize_weight(w, s)
        qx, sx = quantize_rows(smooth_activations(x, s))
        y = int8_linear(x, qw, sw, b, s)
        same = dict(qw=torch.equal(qw.to(torch.int8), qw_c), sw=torch.equal(sw, sw_c),
                    qx=torch.equal(qx.to(torch.int8), qx_c), sx=torch.equal(sx, sx_c), y=torch.equal(y, y_c))
        log(f"ref_compare {device} tf32={torch.backends.cuda.matmul.allow_tf32} {tag}: " + json.dumps(same) + f" (y max |diff| {float((y - y_c).abs().max()):.3g})")
        assert all(same.values()), (tag, same)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all", help="PTQ / PTQ+SQ / QAT evaluation, QAT, export, goldens (GPU)")
    a.add_argument("--simdump", required=True)
    a.add_argument("--model", default=str(REPO / "models/road-student"))
    a.add_argument("--work", required=True)
    a.add_argument("--out", required=True, help="road-student-int8/, road-student-int8-ptq(-sq)/, quant-golden/, "
                                                "results_quant.json")
    a.add_argument("--smoke", action="store_true", help="tiny data and a few steps: checks the whole path")
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--scenarios", type=int, default=10000)
    a.add_argument("--frames", type=int, default=150)
    a.add_argument("--every", type=int, default=30)
    a.add_argument("--eval-seed", type=int, default=1_000_000)
    a.add_argument("--eval-scenarios", type=int, default=300)
    a.add_argument("--eval-every", type=int, default=30)
    a.add_argument("--calib-seed", type=int, default=CALIB_SEED)
    a.add_argument("--calib-scenarios", type=int, default=64)
    a.add_argument("--calib-every", type=int, default=30)
    a.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    a.add_argument("--qat-smooth", choices=["auto", "on", "off"], default="auto",
                   help="QAT with the SmoothQuant factors (auto: if PTQ+SQ beat PTQ by > 0.002)")
    a.add_argument("--seconds", type=float, default=200, help="QAT wall-time budget")
    a.add_argument("--deadline-s", type=float, default=0, help="shrink the QAT budget so the run ends by then")
    a.add_argument("--reserve-s", type=float, default=40, help="time kept for export and goldens")
    a.add_argument("--min-seconds", type=float, default=30)
    a.add_argument("--qat-floor-s", type=float, default=150,
                   help="optional evaluations are skipped when they would leave QAT less than this")
    a.add_argument("--steps", type=int, default=0)
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--warmup", type=int, default=50)
    a.add_argument("--kd-temp", type=float, default=2.0)
    a.add_argument("--kd-alpha", type=float, default=0.5)
    a.add_argument("--fast-beta", type=float, default=0.5)
    a.add_argument("--temporal-frac", type=float, default=0.25)
    a.add_argument("--control", action="store_true",
                   help="controls instead of the main run: float fine-tuning (+ PTQ) and KD-only QAT, --steps each")
    a.add_argument("--amp", action="store_true", help="bf16 autocast around the student's float parts in QAT")
    a.add_argument("--golden-frames", default=str(REPO / "tests/fixtures/student-golden"))
    g = sub.add_parser("golden", help="golden tensors of an int8 model directory (float32, CPU)")
    g.add_argument("--model", default=str(REPO / "models/road-student-int8"))
    g.add_argument("--frames", default=str(REPO / "tests/fixtures/student-golden"))
    g.add_argument("--out", default=str(REPO / "tests/fixtures/quant-golden"))
    g.add_argument("--pixel-ref", default="../student-golden")
    g.add_argument("--threads", type=int, default=4)
    s = sub.add_parser("selftest", help="the arithmetic against its definition (CPU)")
    s.add_argument("--ref-dump", default="", help="folder written by the C++ reference driver (optional)")
    args = ap.parse_args()
    if args.cmd == "all":
        if args.smoke:
            args.scenarios, args.frames, args.eval_scenarios, args.calib_scenarios = 32, 60, 8, 4
            args.steps, args.batch, args.eval_every = 10, 16, 15
        run_all(args)
    elif args.cmd == "golden":
        torch.set_num_threads(args.threads)
        make_quant_golden(args.model, args.frames, args.out, pixel_ref=args.pixel_ref, threads=args.threads)
    else:
        selftest(args)


if __name__ == "__main__":
    main()
