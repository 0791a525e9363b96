"""Analytic decode-step model: what one verification step costs per rank (docs/perf-model.md).

    T_step(N) = max(W_rank / (eta * BW_hbm), FLOPs(N) / (e_gemm * TFLOPS))    # weight streaming (roofline)
              + KV_rank(ctx) / (eta * BW_hbm)                                  # attention KV read, once per step
              + L * (2 * t_AR(N * d * act_bytes) + t_layer_fixed)              # latency-bound per-layer terms
              + t_host + (N - 1) * t_verify_token                              # host/launch, sampling over N tokens
              + [Medusa] W_heads / (eta * BW_hbm) + K * t_head + t_medusa_fixed

N is the number of tokens the engine verifies per step: 1 without Medusa; ``max_draft_len + 1`` for
TensorRT-LLM (it always fills max_draft_len+1 slots; docs/sources.md, TensorRT-LLM commands); ``tree nodes + 1`` for the
reference runtime. tokens/s/user = tokens_per_step / T_step. Every constant is documented in
``docs/perf-model.md`` with its source; the TRT-LLM ones are calibrated to NVIDIA's implied baselines
(70B TP8 FP8 on H200: 5.28 ms; 405B: 17.85 ms; docs/perf-model.md, section 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from medusa_trt import engine_facts
from medusa_trt.config.model import ModelShape
from medusa_trt.config.profile import DTYPE_BYTES, HardwareProfile
from medusa_trt.engine_facts import StepConstants

DEFAULT_CONTEXT_LEN = 1024  # tokens in the KV cache when predicting: a chat-length prompt (KV reads ~negligible)
ACCEPTANCE_PER_DEPTH = 0.6  # alpha for the default tokens/step (see default_tokens_per_step)
AR_SMALL_BYTES = 32 * 1024  # all-reduce messages up to this size cost only the latency (sources.md, All-reduce)


def constants_for(profile: HardwareProfile) -> StepConstants:
    """The engine's step-time constants: its row in engine_facts (values and sources in docs/perf-model.md)."""
    return engine_facts.get(profile.engine).step


# --- bytes per rank ---------------------------------------------------------------------------------


def padded_vocab(vocab: int, tp: int) -> int:
    """TRT-LLM's pad_vocab_size: round up to a multiple of tp (docs/sources.md, TensorRT-LLM checkpoint format)."""
    return -(-vocab // tp) * tp


def kv_heads_per_rank(model: ModelShape, tp: int) -> int:
    """KV heads each rank holds: TRT-LLM replicates KV heads when there are fewer than tp."""
    return max(1, model.num_key_value_heads // tp)


def weight_bytes(profile: HardwareProfile) -> float:
    """Bytes per element of the block linears (FP8 quantizes only those)."""
    return 1.0 if profile.precision.quantization == "fp8" else DTYPE_BYTES[profile.precision.dtype]


def act_bytes(profile: HardwareProfile) -> float:
    return DTYPE_BYTES[profile.precision.dtype]


def head_bytes(profile: HardwareProfile) -> float:
    """Medusa heads stay unquantized; the FP8 path writes them as float16 (docs/sources.md, checkpoint format)."""
    return 4.0 if profile.precision.dtype == "float32" else 2.0


def linear_params_per_rank(model: ModelShape, tp: int) -> float:
    """QKV, O, gate/up/down of all layers on one rank."""
    d, hd = model.hidden_size, model.head_dim
    q = model.num_attention_heads * hd / tp
    kv = kv_heads_per_rank(model, tp) * hd
    per_layer = d * (q + 2 * kv) + q * d + 3 * d * model.intermediate_size / tp
    return model.num_hidden_layers * per_layer


def lm_head_params_per_rank(model: ModelShape, tp: int) -> float:
    return padded_vocab(model.vocab_size, tp) / tp * model.hidden_size


def medusa_head_params_per_rank(model: ModelShape, tp: int, num_heads: int, num_layers: int = 1) -> float:
    """K heads of L ResBlocks (d x d + bias) and a d x V lm_head, all split on the output dim."""
    d = model.hidden_size
    per_head = num_layers * (d * d + d) / tp + padded_vocab(model.vocab_size, tp) / tp * d
    return num_heads * per_head


def streamed_weight_bytes(profile: HardwareProfile, model: ModelShape) -> float:
    """Weights one rank reads per step (the embedding is a row gather, not a stream)."""
    tp = profile.parallelism.tp
    norms = (2 * model.num_hidden_layers + 1) * model.hidden_size * act_bytes(profile)
    return (
        linear_params_per_rank(model, tp) * weight_bytes(profile)
        + lm_head_params_per_rank(model, tp) * act_bytes(profile)
        + norms
    )


def kv_bytes_per_token(profile: HardwareProfile, model: ModelShape) -> float:
    """K and V of all layers for one token on one rank, at the KV-cache dtype."""
    kv = kv_heads_per_rank(model, profile.parallelism.tp)
    return 2 * model.num_hidden_layers * kv * model.head_dim * DTYPE_BYTES[profile.precision.kv_dtype]


# --- time ---------------------------------------------------------------------------------------------


def allreduce_us(profile: HardwareProfile, message_bytes: float) -> float:
    """One all-reduce: the small-message latency, plus (tp-1) peer reads per byte above 32 KiB."""
    tp = profile.parallelism.tp
    if tp == 1:
        return 0.0
    hw = profile.hardware
    per_direction = hw.interconnect_bandwidth_gbps / 2 * 1e9  # bytes/s; the profile gives bidirectional
    extra = max(0.0, message_bytes - AR_SMALL_BYTES) * (tp - 1)
    return hw.allreduce_latency_us + extra / (constants_for(profile).ar_bw_efficiency * per_direction) * 1e6


def _tflops(profile: HardwareProfile) -> float | None:
    t = profile.hardware.dense_tflops
    if profile.precision.quantization == "fp8":
        return t.fp8
    return {"bfloat16": t.bf16, "float16": t.fp16, "float32": t.fp32}[profile.precision.dtype]


def step_breakdown(
    profile: HardwareProfile,
    model: ModelShape,
    verify_tokens: int,
    context_len: int,
    num_medusa_heads: int | None = None,
) -> dict[str, float]:
    """Milliseconds per term of one step (see the module docstring); ``total`` sums them.

    ``num_medusa_heads`` None: the profile's heads when verify_tokens > 1, none otherwise.
    """
    c = constants_for(profile)
    n = max(1, int(verify_tokens))
    heads = (profile.medusa.num_heads if n > 1 else 0) if num_medusa_heads is None else num_medusa_heads
    bw = c.hbm_efficiency * profile.hardware.hbm_bandwidth_tbps * 1e12  # bytes/s
    tp = profile.parallelism.tp
    flops = 2 * n * (linear_params_per_rank(model, tp) + lm_head_params_per_rank(model, tp))
    tflops = _tflops(profile)
    compute_s = flops / (c.gemm_efficiency * tflops * 1e12) if tflops else 0.0
    msg = n * model.hidden_size * act_bytes(profile)
    out = {
        "weights": max(streamed_weight_bytes(profile, model) / bw, compute_s) * 1e3,
        "kv_cache": kv_bytes_per_token(profile, model) * max(0, context_len) / bw * 1e3,
        "allreduce": model.num_hidden_layers * 2 * allreduce_us(profile, msg) / 1e3,
        "layer_fixed": model.num_hidden_layers * c.layer_fixed_us / 1e3,
        "host": c.host_ms,
        "verify": (n - 1) * c.verify_token_us / 1e3,
        "medusa_heads": 0.0,
    }
    if heads:
        w = medusa_head_params_per_rank(model, tp, heads, profile.medusa.num_layers) * head_bytes(profile)
        out["medusa_heads"] = (w / bw) * 1e3 + (heads * c.head_us + c.medusa_fixed_us) / 1e3
    out["total"] = sum(out.values())
    return out


def step_time_ms(
    profile: HardwareProfile,
    model: ModelShape,
    verify_tokens: int,
    context_len: int,
    num_medusa_heads: int | None = None,
) -> float:
    """Predicted time of one decode step that verifies ``verify_tokens`` tokens (1 = plain decoding)."""
    return step_breakdown(profile, model, verify_tokens, context_len, num_medusa_heads)["total"]


def step_time_curve(
    profile: HardwareProfile, model: ModelShape, max_nodes: int, context_len: int = DEFAULT_CONTEXT_LEN
) -> dict[int, float]:
    """Predicted step time (ms) for trees of 0..max_nodes draft nodes (0: plain decoding).

    A step verifies the root plus every draft node: ``nodes + 1`` tokens.
    """
    return {n: float(step_time_ms(profile, model, n + 1, context_len)) for n in range(max_nodes + 1)}


def verify_tokens_for(profile: HardwareProfile, tree_nodes: int) -> int:
    """Tokens computed per Medusa step: TRT-LLM pads to max_draft_len+1, the reference runtime does not."""
    padded = engine_facts.get(profile.engine).pads_to_max_draft_len
    return profile.medusa.max_draft_len + 1 if padded else tree_nodes + 1


def default_tokens_per_step(tree_depth: int, alpha: float = ACCEPTANCE_PER_DEPTH) -> float:
    """Expected tokens/step when none is measured: the i.i.d. chain formula sum_{d=0..D} alpha^d.

    alpha = 0.6 gives 2.18 for a depth-3 tree, inside the 1.7-2.5 range implied by NVIDIA's 70B/405B
    Medusa results (docs/sources.md, NVIDIA's Medusa results on HGX H200). Measure it with
    ``medusa-trt bench`` and pass --tokens-per-step for a real prediction.
    """
    return sum(alpha**d for d in range(max(0, tree_depth) + 1))


@dataclass(frozen=True)
class StepPrediction:
    step_ms: float
    tokens_per_step: float
    tokens_per_s_per_user: float
    verify_tokens: int
    breakdown_ms: dict[str, float]


@dataclass(frozen=True)
class Prediction:
    baseline: StepPrediction
    medusa: StepPrediction
    speedup: float
    context_len: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def predict(
    profile: HardwareProfile,
    model: ModelShape,
    tokens_per_step: float,
    *,
    num_medusa_heads: int | None = None,
    verify_tokens: int | None = None,
    context_len: int = DEFAULT_CONTEXT_LEN,
) -> Prediction:
    """Baseline and Medusa step time and tokens/s/user for one user (batch 1).

    ``verify_tokens`` defaults to :func:`verify_tokens_for` with the profile's tree.
    """
    heads = profile.medusa.num_heads if num_medusa_heads is None else num_medusa_heads
    n = verify_tokens if verify_tokens is not None else verify_tokens_for(profile, len(profile.tree))
    base = step_breakdown(profile, model, 1, context_len, num_medusa_heads=0)
    med = step_breakdown(profile, model, n, context_len, num_medusa_heads=heads)
    b = StepPrediction(base["total"], 1.0, 1e3 / base["total"], 1, base)
    m = StepPrediction(med["total"], tokens_per_step, tokens_per_step * 1e3 / med["total"], n, med)
    return Prediction(b, m, m.tokens_per_s_per_user / b.tokens_per_s_per_user, context_len)
