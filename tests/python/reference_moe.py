"""Plain-PyTorch reference of SPEC for the Python tests: routing in fp32, the MoE in float64.

Written from SPEC and docs/DESIGN.md, independently of the C++ reference. Everything runs on the
CPU (inputs are moved there), one expert at a time.
"""

import os
from dataclasses import dataclass
from typing import Optional

import torch

NUM_METHODS = 10
BF16_EPS = 2.0**-8  # relative spacing of bf16 (8 significant bits)


def fresh_generator() -> torch.Generator:
    """A generator seeded from the OS: fresh random inputs on every run (the seed is in failures)."""
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.Generator().manual_seed(seed)


def sanitizer_size(size: int, cap: int) -> int:
    """A hidden or intermediate size as the GPU tests use it. Under FUSEDMOE_TEST_SANITIZER_SIZES=1
    (scripts/sanitize.sh sets it for racecheck, synccheck and initcheck) a size above ``cap``
    becomes cap + size % 128, the rule of the C++ GPU tests (tests/common/gpu_buffers.h): the
    same tails of the 128-, 64- and 8-wide tiles, with tokens, experts and top-k kept, and a tenth
    to a hundredth of the GEMM work. Otherwise the size is returned unchanged."""
    return cap + size % 128 if under_sanitizer_sizes() and size > cap else size


def under_sanitizer_sizes() -> bool:
    """Whether FUSEDMOE_TEST_SANITIZER_SIZES=1 (a sanitizer's run: see sanitizer_size)."""
    return os.environ.get("FUSEDMOE_TEST_SANITIZER_SIZES") == "1"


def under_sanitizer() -> str:
    """The compute-sanitizer tool this process runs under ("memcheck", ...), or "" when none:
    scripts/sanitize.sh sets FUSEDMOE_TEST_UNDER_SANITIZER for the Python tests it runs."""
    return os.environ.get("FUSEDMOE_TEST_UNDER_SANITIZER", "")


def sanitizer_hidden_size(size: int) -> int:
    return sanitizer_size(size, 256)


def sanitizer_intermediate_size(size: int) -> int:
    return sanitizer_size(size, 128)


@dataclass
class Problem:
    """One random MoE problem on the CPU (bf16 inputs), moved to a device with ``to``."""

    hidden_states: torch.Tensor  # [T, H] bf16
    gemm1_weights: torch.Tensor  # [E, 2I, H] bf16 (all experts: shards slice it)
    gemm2_weights: torch.Tensor  # [E, H, I] bf16
    routing_logits: torch.Tensor  # [T, E] fp32 or bf16
    routing_bias: Optional[torch.Tensor]  # [E]
    num_experts: int
    top_k: int
    intermediate_size: int
    seed: int

    def to(self, device) -> "Problem":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Problem(
            move(self.hidden_states), move(self.gemm1_weights), move(self.gemm2_weights),
            move(self.routing_logits), move(self.routing_bias), self.num_experts, self.top_k,
            self.intermediate_size, self.seed,
        )


def make_problem(
    num_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    num_experts: int,
    top_k: int,
    logits_dtype=torch.float32,
    bias_dtype=None,
    generator: Optional[torch.Generator] = None,
) -> Problem:
    """Random bf16 inputs scaled so every stage stays O(1) (no zeros, no overflow)."""
    g = generator if generator is not None else fresh_generator()
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x = randn(num_tokens, hidden_size).to(torch.bfloat16)
    w1 = (randn(num_experts, 2 * intermediate_size, hidden_size) / hidden_size**0.5).to(torch.bfloat16)
    w2 = (randn(num_experts, hidden_size, intermediate_size) / intermediate_size**0.5).to(torch.bfloat16)
    logits = (2.0 * randn(num_tokens, num_experts)).to(logits_dtype)
    bias = None if bias_dtype is None else (0.5 * randn(num_experts)).to(bias_dtype)
    return Problem(x, w1, w2, logits, bias, num_experts, top_k, intermediate_size, g.initial_seed())


# ---- routing (fp32, SPEC "Routing methods", DESIGN "Routing details") ------------------------------
def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores per row, descending; ties to the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]


def route(
    logits: torch.Tensor,
    bias: Optional[torch.Tensor],
    method: int,
    top_k: int,
    n_group: int = 0,
    topk_group: int = 0,
    routed_scaling_factor: float = 1.0,
):
    """Returns (ids int64 [T, K], weights fp32 [T, K]) as SPEC defines them."""
    z = logits.detach().cpu().float()
    num_tokens, num_experts = z.shape
    b = torch.zeros(num_experts) if bias is None else bias.detach().cpu().float()
    gather = lambda values, ids: torch.gather(values, 1, ids)  # noqa: E731
    if method == 0:  # Default
        p = torch.softmax(z, dim=-1)
        ids = _top_k(p, top_k)
        return ids, gather(p, ids)
    if method == 1:  # Renormalize
        ids = _top_k(z, top_k)
        return ids, torch.softmax(gather(z, ids), dim=-1)
    if method == 2:  # DeepSeekV3
        s = torch.sigmoid(z)
        biased = s + b
        groups = n_group if n_group > 0 else 1
        kept_groups = topk_group if topk_group > 0 else groups
        if groups > 1:
            per_group = biased.view(num_tokens, groups, num_experts // groups)
            top2 = min(2, per_group.shape[-1])
            group_scores = torch.sort(per_group, dim=-1, descending=True).values[..., :top2].sum(-1)
            keep = _top_k(group_scores, kept_groups)
            mask = torch.zeros(num_tokens, groups, dtype=torch.bool)
            mask.scatter_(1, keep, True)
            mask = mask.repeat_interleave(num_experts // groups, dim=1)
            biased = biased.masked_fill(~mask, float("-inf"))
        ids = _top_k(biased, top_k)
        chosen = gather(s, ids)
        return ids, chosen * routed_scaling_factor / (chosen.sum(-1, keepdim=True) + 1e-20)
    if method == 3:  # Llama4
        ids = _top_k(z, 1)
        return ids, torch.sigmoid(gather(z, ids))
    if method == 4:  # RenormalizeNaive
        p = torch.softmax(z, dim=-1)
        ids = _top_k(p, top_k)
        chosen = gather(p, ids)
        return ids, chosen / chosen.sum(-1, keepdim=True)
    if method == 5:  # TopK
        ids = _top_k(z, top_k)
        return ids, gather(z, ids)
    if method == 6:  # SigmoidRenorm
        s = torch.sigmoid(z)
        ids = _top_k(s, top_k)
        chosen = gather(s, ids)
        return ids, chosen / chosen.sum(-1, keepdim=True)
    if method == 7:  # MiniMax2
        s = torch.sigmoid(z)
        ids = _top_k(s + b, top_k)
        chosen = gather(s, ids)
        return ids, chosen * routed_scaling_factor / (chosen.sum(-1, keepdim=True) + 1e-20)
    if method == 8:  # Sigmoid
        s = torch.sigmoid(z)
        ids = _top_k(s, top_k)
        return ids, gather(s, ids)
    if method == 9:  # TopKSigmoid
        ids = _top_k(z, top_k)
        return ids, torch.sigmoid(gather(z, ids))
    raise ValueError(f"unknown method {method}")


# ---- the expert MLP's options (SPEC "The math": activations, biases, weights on the input) --------
GATED = (3, 4, 7, 8)  # Swiglu, Geglu, SwigluStep, GegluTanh; Gelu 0, Relu 1, Silu 2, Relu2 6 are not


@dataclass
class Mlp:
    """The expert MLP of a call; the defaults are plain SwiGLU without biases."""

    activation: int = 3
    alpha: Optional[torch.Tensor] = None  # [E_loc] float32
    beta: Optional[torch.Tensor] = None
    limit: Optional[torch.Tensor] = None
    bias1: Optional[torch.Tensor] = None  # [E_loc, 2I] or [E_loc, I]
    bias2: Optional[torch.Tensor] = None  # [E_loc, H]
    on_input: bool = False  # use_routing_scales_on_input

    def kwargs(self) -> dict:
        """The keyword arguments of the fusedmoe call that selects this MLP."""
        return dict(activation_type=self.activation, gemm1_alpha=self.alpha, gemm1_beta=self.beta,
                    gemm1_clamp_limit=self.limit, gemm1_bias=self.bias1, gemm2_bias=self.bias2,
                    use_routing_scales_on_input=self.on_input)

    def to(self, device) -> "Mlp":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Mlp(self.activation, move(self.alpha), move(self.beta), move(self.limit),
                   move(self.bias1), move(self.bias2), self.on_input)


def _gelu(v, tanh_form=False):
    if tanh_form:
        return 0.5 * v * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (v + 0.044715 * v**3)))
    return 0.5 * v * (1 + torch.erf(v / 2**0.5))


def activate(g, inter, mlp: Mlp, e: int):
    """The activation of GEMM1's output rows g [n, 2I or I] for local expert e (SPEC's formulas)."""
    scalar = lambda t, default: default if t is None else t[e].item()  # noqa: E731
    act = mlp.activation
    if act in GATED:
        up, gate = g[:, :inter], g[:, inter:]
        limit = scalar(mlp.limit, 7.0 if act == 7 else float("inf"))
        if act == 3:  # Swiglu
            gate = torch.clamp(gate, max=limit)
            up = torch.clamp(up, min=-limit, max=limit)
            alpha, beta = scalar(mlp.alpha, 1.0), scalar(mlp.beta, 0.0)
            return gate * torch.sigmoid(alpha * gate) * (up + beta)
        if act == 7:  # SwigluStep
            return torch.clamp(gate * torch.sigmoid(gate), max=limit) * torch.clamp(up, -limit, limit)
        return _gelu(gate, tanh_form=act == 8) * up  # Geglu 4, GegluTanh 8
    if act == 0:
        return _gelu(g)
    if act == 1:
        return torch.relu(g)
    if act == 2:
        return g * torch.sigmoid(g)
    if act == 6:
        return torch.relu(g) ** 2
    raise ValueError(f"unknown activation {act}")


# ---- the MoE (SPEC "The math") -----------------------------------------------------------------------
def moe_reference(
    hidden_states, gemm1_weights, gemm2_weights, ids, weights, local_expert_offset=0, bf16_stages=False,
    mlp: Optional[Mlp] = None,
) -> torch.Tensor:
    """Output [T, H] float64 of the local experts (gemm weights hold the local experts only).

    ``bf16_stages`` False: everything in float64 from the bf16 inputs (the truth). True: the same
    math with DESIGN's roundings (fp32 GEMMs, a and y rounded to bf16, fp32 sum, bf16 output), the
    error scale of the tolerance rule. ``mlp``: activation, biases and routing weights on the input
    (default: plain SwiGLU). With ``mlp.on_input`` the experts see bf16(w * x) in both (the model
    rounds it) and their outputs are not weighted again.
    """
    mlp = Mlp() if mlp is None else mlp
    compute = torch.float32 if bf16_stages else torch.float64
    ids = ids.detach().cpu().long()
    w = weights.detach().cpu().to(compute)
    x_bf16 = hidden_states.detach().cpu()
    if mlp.on_input:  # K == 1: token t's only weight scales its row, rounded once to bf16
        x_bf16 = (x_bf16.float() * weights.detach().cpu().float()[:, :1]).to(torch.bfloat16)
        w = torch.ones_like(w)
    x = x_bf16.to(compute)
    num_tokens, hidden_size = x.shape
    num_local = gemm1_weights.shape[0]
    inter = gemm2_weights.shape[2]
    bias = lambda t, e: 0.0 if t is None else t[e].detach().cpu().to(compute)  # noqa: E731
    out = torch.zeros(num_tokens, hidden_size, dtype=compute)
    for e in range(num_local):
        tokens, slots = torch.nonzero(ids == local_expert_offset + e, as_tuple=True)
        if tokens.numel() == 0:
            continue
        w1 = gemm1_weights[e].detach().cpu().to(compute)
        w2 = gemm2_weights[e].detach().cpu().to(compute)
        g = x[tokens] @ w1.T + bias(mlp.bias1, e)
        a = activate(g, inter, mlp, e)
        if bf16_stages:
            a = a.to(torch.bfloat16).to(compute)
        y = a @ w2.T + bias(mlp.bias2, e)
        if bf16_stages:
            y = y.to(torch.bfloat16).to(compute)
        out.index_add_(0, tokens, w[tokens, slots, None] * y)
    if bf16_stages:
        out = out.to(torch.bfloat16)
    return out.double()


def assert_close_to_reference(ours, hidden_states, gemm1_weights, gemm2_weights, ids, weights,
                              local_expert_offset=0, seed=None, atol=1e-3, mlp=None):
    """docs/STYLE.md's rule: max|ours - ref| <= 2 * max|bf16_ref - ref| + atol."""
    ref = moe_reference(hidden_states, gemm1_weights, gemm2_weights, ids, weights, local_expert_offset,
                        mlp=mlp)
    bf16_ref = moe_reference(
        hidden_states, gemm1_weights, gemm2_weights, ids, weights, local_expert_offset, bf16_stages=True,
        mlp=mlp,
    )
    num_local = gemm1_weights.shape[0]
    has_local = ((ids >= local_expert_offset) & (ids < local_expert_offset + num_local)).any()
    assert not has_local or ref.abs().max() > 0, f"degenerate reference (seed {seed})"
    ours64 = ours.detach().cpu().double()
    assert torch.isfinite(ours64).all(), f"non-finite output (seed {seed})"
    error = (ours64 - ref).abs().max().item() if ref.numel() else 0.0
    bound = 2 * ((bf16_ref - ref).abs().max().item() if ref.numel() else 0.0) + atol
    assert error <= bound, f"max|ours - ref| = {error:.3e} > {bound:.3e} (seed {seed})"


def assert_weights_match(ours_bf16, weights_fp32, seed=None):
    """Returned bf16 routing weights equal fp32 ones rounded once (one ulp of slack at a tie)."""
    ours = ours_bf16.detach().cpu().float()
    slack = BF16_EPS * weights_fp32.abs() + 1e-6
    worst = ((ours - weights_fp32).abs() - slack).max().item() if ours.numel() else -1.0
    assert worst <= 0, f"expert_weights differ from SPEC's weights beyond one bf16 ulp (seed {seed})"


# ---- the FP8 block-scale variant (SPEC "FP8 block-scale variant") ------------------------------------
FP8_BLOCK = 128


def quantize_groups_fp8(values: torch.Tensor):
    """values [R, C] (C % 128 == 0) -> (e4m3 [R, C], scales [R, C / 128] fp32), SPEC's rule:
    scale = amax / 448 over each 128-group (NaN skipped), e4m3 = RNE(v / scale) saturated to
    +-448, v itself where scale == 0. Written with plain torch ops, independently of fusedmoe.fp8."""
    rows, cols = values.shape
    v = values.float().reshape(rows, cols // FP8_BLOCK, FP8_BLOCK)
    magnitude = v.abs()
    amax = torch.where(magnitude.isnan(), torch.zeros_like(magnitude), magnitude).amax(-1, keepdim=True)
    scale = amax / 448.0
    scaled = torch.where(scale > 0, v / scale, v).clamp(-448.0, 448.0)
    return scaled.to(torch.float8_e4m3fn).reshape(rows, cols), scale.reshape(rows, -1)


def dequantize_rows_fp8(codes, scales, dtype=torch.float64):
    """e4m3 [R, C] with scales [R, C / 128] -> values [R, C] (exact in float64)."""
    rows, cols = codes.shape
    v = codes.to(dtype).reshape(rows, cols // FP8_BLOCK, FP8_BLOCK) * scales.to(dtype)[..., None]
    return v.reshape(rows, cols)


def dequantize_blocks_fp8(codes, scales, dtype=torch.float64):
    """e4m3 [N, K] with 128x128 block scales [N / 128, K / 128] -> values [N, K]."""
    n, k = codes.shape
    v = codes.to(dtype).reshape(n // FP8_BLOCK, FP8_BLOCK, k // FP8_BLOCK, FP8_BLOCK)
    return (v * scales.to(dtype)[:, None, :, None]).reshape(n, k)


def moe_reference_fp8(x_codes, x_scales, w1, w1_scales, w2, w2_scales, ids, weights,
                      local_expert_offset=0, bf16_stages=False, mlp: Optional[Mlp] = None):
    """Output [T, H] float64 of the FP8 variant for e4m3 hidden states x_codes [T, H] with
    token-major scales x_scales [T, H / 128] and e4m3 expert weights with block scales.

    The GEMMs sum exact products of the dequantised operands (float64, or float32 with
    ``bf16_stages`` and the bf16 roundings of y and the output, the tolerance rule's error scale);
    the activation is rounded to bf16 and quantised per 128-group before GEMM2 in both, as SPEC
    pins it.
    """
    mlp = Mlp() if mlp is None else mlp
    compute = torch.float32 if bf16_stages else torch.float64
    ids = ids.detach().cpu().long()
    w = weights.detach().cpu().to(compute)
    x = dequantize_rows_fp8(x_codes.cpu(), x_scales.cpu(), compute)
    num_tokens, hidden_size = x.shape
    inter = w2.shape[2]
    bias = lambda t, e: 0.0 if t is None else t[e].detach().cpu().to(compute)  # noqa: E731
    out = torch.zeros(num_tokens, hidden_size, dtype=compute)
    for e in range(w1.shape[0]):
        tokens, slots = torch.nonzero(ids == local_expert_offset + e, as_tuple=True)
        if tokens.numel() == 0:
            continue
        g = x[tokens] @ dequantize_blocks_fp8(w1[e].cpu(), w1_scales[e].cpu(), compute).T + bias(mlp.bias1, e)
        a = activate(g, inter, mlp, e).to(torch.bfloat16)
        a = dequantize_rows_fp8(*quantize_groups_fp8(a), compute)
        y = a @ dequantize_blocks_fp8(w2[e].cpu(), w2_scales[e].cpu(), compute).T + bias(mlp.bias2, e)
        if bf16_stages:
            y = y.to(torch.bfloat16).to(compute)
        out.index_add_(0, tokens, w[tokens, slots, None] * y)
    if bf16_stages:
        out = out.to(torch.bfloat16)
    return out.double()


# The GPU's FP8 operator against moe_reference_fp8 (docs/fp8.md "Accuracy on the GPU"). Hopper's
# FP8 tensor cores add a 128-deep block's products with reduced precision, so GEMM1 differs from
# an fp32 sum by ~1e-4 relative; the activation's bf16 rounding and e4m3 re-quantisation turn that
# into different codes for some activations (a whole group's when its largest element rounds the
# other way), moving single rows by up to ~4 % and the output by ~0.5 % (measured on an H200).
# The rule: relative Frobenius error <= 1e-2 overall and <= 0.1 in every row. A wrong scale,
# block, row or expert moves its rows by tens of per cent; the GEMM kernels' indexing is pinned
# bitwise by tests/test_gpu_fp8.cu on problems whose arithmetic is exact.
FP8_GPU_MAX_REL = 1e-2
FP8_GPU_MAX_ROW_REL = 0.1


def assert_fp8_gpu_close(ours: torch.Tensor, exact: torch.Tensor, seed=None):
    ours64 = ours.detach().cpu().double()
    assert torch.isfinite(ours64).all(), f"non-finite output (seed {seed})"
    assert exact.abs().max() > 0, f"degenerate reference (seed {seed})"
    total = ((ours64 - exact).norm() / exact.norm()).item()
    rows = (ours64 - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-30)
    nonzero = exact.norm(dim=-1) > 0
    worst = rows[nonzero].max().item()
    assert total <= FP8_GPU_MAX_REL, f"relative error {total:.3e} > {FP8_GPU_MAX_REL} (seed {seed})"
    assert worst <= FP8_GPU_MAX_ROW_REL, f"a row's relative error {worst:.3e} (seed {seed})"
    assert (ours64[~nonzero] == 0).all(), f"rows of no local expert are not zero (seed {seed})"
