"""Expert parallelism across ranks over a ``torch.distributed`` ProcessGroup (docs/distributed.md).

``ExpertParallelMoE`` is one MoE layer whose E experts are split evenly over the ranks of a group:
rank r holds experts ``[r * E / W, (r + 1) * E / W)`` and calls the operator with that expert
window (``local_expert_offset``, ``local_num_experts``). Each rank passes its own tokens and gets
their outputs back, equal to what the single-GPU operator gives on the whole problem. Two ways to
move the tokens, one interface:

* ``mode="allgather"``: every rank all-gathers the tokens and routing inputs of all ranks, runs
  the operator on all of them with its expert window (``do_finalize=False``), reduces its experts'
  unweighted outputs to an fp32 partial sum per token, and an ordered reduce-scatter (an
  all-to-all of the fp32 partials, summed in rank order) returns each rank its tokens' outputs.
  No host synchronisation when ``num_tokens_per_rank`` is given and was checked across ranks by
  an earlier call with the same list (the first call checks it): capturable in a CUDA graph.
* ``mode="alltoall"``: each rank routes its own tokens, sends each token once to every rank that
  holds one of its experts (``all_to_all_single`` with per-rank counts), the owner runs the routed
  operator on what it received (``do_finalize=False``) and sends back one unweighted output row
  per (token, slot); the token's rank sums them with the routing weights in ascending slot order,
  exactly as the operator's own finalize does. The counts go through the host: one host sync.

The expert MLP's options of the operator (``activation_type``, ``gemm1_alpha``, ``gemm1_beta``,
``gemm1_clamp_limit``, ``gemm1_bias``, ``gemm2_bias``, ``use_routing_scales_on_input``) are
constructor options, their per-expert tensors given for this rank's experts like the weights; every
operator call that computes experts gets them. Biases are inside each (token, slot)'s expert row,
which exactly one rank computes; with ``use_routing_scales_on_input`` the weights scaled the
experts' inputs, so both modes sum the rows with weights of 1, as the operator's finalize does.

Determinism: neither mode uses a reduction whose order the communication library chooses. The
all-gather mode's partials are summed in rank order 0, 1, ..., W-1; the all-to-all mode sums each
token's K slots in ascending k with the operator's fmaf rounding, so its output is bitwise the
single-GPU operator's wherever the expert outputs are (always on the CPU reference).

CPU tensors need a ``gloo`` group (the operator runs its CPU reference); CUDA tensors need
``nccl``. Inference only: no autograd.
"""

import math
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from . import _checks, api, fp8

MODES = ("allgather", "alltoall")

# Backends the layer runs over, per device type: gloo on CPU (tested in CI), NCCL on GPUs (gloo
# would stage every transfer through host memory). The NCCL path is written and has GPU tests,
# but has not run yet (docs/distributed.md, its status paragraph).
_BACKENDS_FOR_DEVICE = {"cpu": ("gloo",), "cuda": ("nccl",)}

# Routing-input kinds, as exchanged between ranks to check that they all pass the same kind.
_KIND_NAMES = {
    0: "fp32 routing_logits",
    1: "bf16 routing_logits",
    2: "packed topk_ids",
    3: "(topk_ids, bf16 weights)",
    4: "(topk_ids, fp32 weights)",
}

# The most (num_tokens_per_rank, routing kind) pairs a layer remembers as checked (then it forgets
# them all, on every rank alike, and checks again as they come).
_MAX_CHECKED_COUNTS = 1024

# The routing-only call of the all-to-all mode computes a 1-expert MLP of this intermediate size
# (the smallest the operator accepts) on zero weights: its routing is the operator's own.
_ROUTING_PROBE_INTERMEDIATE = _checks.SIZE_MULTIPLE


class CollectiveRecord(NamedTuple):
    """One collective of a call, as ``ExpertParallelMoE.collective_log`` records it.

    ``start``/``end`` are ``torch.cuda.Event`` (timing enabled, recorded on the current stream of
    the layer's device around the collective) for CUDA tensors, ``time.perf_counter()`` seconds
    for CPU tensors. Bytes count only what crosses between ranks (a rank's own chunk stays local).
    """

    name: str  # the step: gather_counts, dispatch_hidden, combine_outputs, ...
    collective: str  # "all_gather" or "all_to_all"
    bytes_received: int  # from the other ranks
    bytes_sent: int  # to the other ranks
    start: object
    end: object


class ExpertParallelMoE:
    """An expert-parallel MoE layer: this rank's E / world_size experts, over ``group``.

    Construct it on every rank of ``group`` together (the constructor runs one collective that
    checks the ranks agree on the layer's configuration), then call it on every rank together.

    Args:
        group: the ``torch.distributed`` ProcessGroup the experts are split over, or None for the
            default group. Its backend must move tensors of the weights' device: gloo for CPU
            tensors, nccl for CUDA tensors.
        gemm1_weights: [E / W, 2 * intermediate_size, H] bf16, this rank's experts in the
            canonical layout (``fusedmoe.prepare_weights``): rank r holds experts
            [r * E / W, (r + 1) * E / W).
        gemm2_weights: [E / W, H, intermediate_size] bf16.
        num_experts: E, the global number of experts (a multiple of the group's size W).
        top_k: K, experts per token.
        intermediate_size: I.
        mode: ``"allgather"`` or ``"alltoall"`` (module docstring; docs/distributed.md).
        routing_method_type, n_group, topk_group, routed_scaling_factor, routing_bias: as in
            ``trtllm_bf16_moe``; used when a call passes ``routing_logits``. routing_bias must be
            bitwise the same on every rank (the constructor compares it); the layer keeps the
            tensor by reference, so an in-place change after construction must be made on every
            rank alike (nothing checks it again).
        expert_weights_dtype: as in ``trtllm_bf16_moe`` (logits routing only).
        activation_type: an ``ActivationType`` (default Swiglu). Non-gated ones (Gelu, Relu, Silu,
            Relu2) take gemm1_weights [E / W, intermediate_size, H].
        gemm1_alpha, gemm1_beta, gemm1_clamp_limit: optional fp32 [E / W], one value per expert of
            this rank (like the weights: entry j is expert ``local_expert_offset + j``); as in
            ``trtllm_bf16_moe`` (alpha and beta: Swiglu only; the limit: Swiglu and SwigluStep).
        gemm1_bias: optional [E / W, 2 * intermediate_size] (gated; up columns then gate columns)
            or [E / W, intermediate_size] (non-gated), bf16 or fp32, this rank's experts.
        gemm2_bias: optional [E / W, H] bf16 or fp32, this rank's experts.
        use_routing_scales_on_input: top_k == 1 only: the expert computes on bf16(w * x) and its
            output is not weighted again (Llama 4); the combine then sums with weights of 1.
        gemm1_weights_scale, gemm2_weights_scale: with float8_e4m3fn weights (the FP8
            block-scale variant, docs/fp8.md), this rank's fp32 block scales
            [E / W, (2I or I) / 128, H / 128] and [E / W, H / 128, I / 128]; None with bf16
            weights. The bf16 hidden states are quantised on the token's rank by the operator's
            rule and move in e4m3 with their scales, so the result is the single-device FP8
            operator's (not with use_routing_scales_on_input).

    Attributes:
        rank, world_size, local_expert_offset, local_num_experts: this rank's place and experts.
        collective_log: None, or a list that every collective of a call appends a
            ``CollectiveRecord`` to (for benchmarks; leave it None while capturing a CUDA graph).

    Raises:
        TypeError, ValueError naming the argument: a wrong type, dtype, shape or device (a
        per-expert tensor with other than E / W experts in dim 0 included), E not a multiple of
        W, a group whose backend cannot move the weights' device, or ranks that disagree on any
        configuration value (the activation, use_routing_scales_on_input, which per-expert
        tensors are given, with their dtypes, and routing_bias's values included). Whatever a
        rank raises after the group and backend checks (a RuntimeError included), every other
        rank raises a ValueError naming the argument; the group and backend checks raise on
        their rank only.
    """

    def __init__(
        self,
        group: Optional[dist.ProcessGroup],
        gemm1_weights: torch.Tensor,
        gemm2_weights: torch.Tensor,
        num_experts: int,
        top_k: int,
        intermediate_size: int,
        *,
        mode: str = "allgather",
        routing_method_type: int = api.RoutingMethod.Default,
        n_group: Optional[int] = None,
        topk_group: Optional[int] = None,
        routed_scaling_factor: Optional[float] = None,
        routing_bias: Optional[torch.Tensor] = None,
        expert_weights_dtype: torch.dtype = torch.bfloat16,
        activation_type: int = api.ActivationType.Swiglu,
        gemm1_alpha: Optional[torch.Tensor] = None,
        gemm1_beta: Optional[torch.Tensor] = None,
        gemm1_clamp_limit: Optional[torch.Tensor] = None,
        gemm1_bias: Optional[torch.Tensor] = None,
        gemm2_bias: Optional[torch.Tensor] = None,
        use_routing_scales_on_input: bool = False,
        gemm1_weights_scale: Optional[torch.Tensor] = None,
        gemm2_weights_scale: Optional[torch.Tensor] = None,
    ):
        # Without a usable group and device nothing can be exchanged: these raise at once, on this
        # rank only. The device is the weights' (or, when gemm1_weights is not a tensor, one the
        # group's backend moves, so that this rank can still tell the others it failed).
        self.group = _resolve_group(group)
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        weights_given = isinstance(gemm1_weights, torch.Tensor)
        self.device = gemm1_weights.device if weights_given else _backend_device(self.group)
        _check_backend(self.group, self.device)
        self.collective_log: Optional[list] = None
        self._routing_probe_weights = None
        # (num_tokens_per_rank, routing kind) pairs all ranks were seen to pass alike: the same
        # set on every rank, since a pair is added only when every rank passed it.
        self._checked_counts = set()
        # Everything else is checked locally, then every rank learns whether any rank failed, so
        # that all of them raise instead of some waiting in a collective. Any exception counts (a
        # RuntimeError of the routing call included): the others then raise a ValueError naming
        # the argument, this rank its own exception.
        try:
            if not weights_given:
                raise TypeError(
                    f"gemm1_weights: expected a torch.Tensor, got {type(gemm1_weights).__name__}"
                )
            self._configure(
                gemm1_weights, gemm2_weights, num_experts, top_k, intermediate_size, mode,
                routing_method_type, n_group, topk_group, routed_scaling_factor, routing_bias,
                expert_weights_dtype,
                _ExpertMlp(activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias,
                           gemm2_bias, use_routing_scales_on_input),
                (gemm1_weights_scale, gemm2_weights_scale),
            )
            error = None
        except Exception as raised:  # noqa: BLE001 (reported to every rank, then re-raised)
            error = raised
        self._check_ranks_agree(error)
        self._check_routing_bias_agrees()

    def _configure(self, gemm1_weights, gemm2_weights, num_experts, top_k, intermediate_size,
                   mode, routing_method_type, n_group, topk_group, routed_scaling_factor,
                   routing_bias, expert_weights_dtype, mlp, scales):
        """The constructor's local checks; sets the layer's attributes."""
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.mode = mode
        self.num_experts = _checks.check_int("num_experts", num_experts, 1, _checks.MAX_NUM_EXPERTS)
        if num_experts % self.world_size:
            raise ValueError(
                f"num_experts: expected a multiple of the group's size {self.world_size} (each rank "
                f"holds num_experts / world_size experts), got {num_experts}"
            )
        self.local_num_experts = num_experts // self.world_size
        self.local_expert_offset = self.rank * self.local_num_experts
        _checks.check_tensor("gemm1_weights", gemm1_weights, (torch.bfloat16, torch.float8_e4m3fn),
                             (None, None, None))
        num_local, _, hidden_size = gemm1_weights.shape
        if num_local != self.local_num_experts:
            raise ValueError(
                f"gemm1_weights: expected {self.local_num_experts} experts in dim 0 (num_experts "
                f"{num_experts} / world_size {self.world_size}), got shape {tuple(gemm1_weights.shape)}"
            )
        if hidden_size == 0 or hidden_size % _checks.SIZE_MULTIPLE:
            raise ValueError(
                f"gemm1_weights: expected dim 2 (H) a positive multiple of {_checks.SIZE_MULTIPLE}, "
                f"got shape {tuple(gemm1_weights.shape)}"
            )
        activation = _checks.check_activation(mlp.activation_type)
        # The operator's own checks of the weights, sizes and expert window (no token).
        no_tokens = torch.empty((0, hidden_size), dtype=torch.bfloat16, device=self.device)
        fp8 = gemm1_weights.dtype == torch.float8_e4m3fn
        _checks.check_problem(
            no_tokens, gemm1_weights, gemm2_weights, num_experts, top_k, intermediate_size,
            self.local_expert_offset, self.local_num_experts, activation, fp8=fp8,
        )
        self.gemm1_weights, self.gemm2_weights = gemm1_weights, gemm2_weights
        self.hidden_size, self.top_k, self.intermediate_size = hidden_size, top_k, intermediate_size
        self._mlp = self._check_mlp(mlp._replace(activation_type=activation))
        self._fp8_scales = self._check_fp8_scales(fp8, *scales)

        self.routing_method_type = api._routing_method(routing_method_type)
        self.n_group = _checks.check_int("n_group", 0 if n_group is None else n_group, 0, num_experts)
        self.topk_group = _checks.check_int(
            "topk_group", 0 if topk_group is None else topk_group, 0, num_experts
        )
        self.routed_scaling_factor = _checks.check_optional_float(
            "routed_scaling_factor", routed_scaling_factor, 1.0)
        if routing_bias is not None:
            _checks.check_tensor(
                "routing_bias", routing_bias, (torch.float32, torch.bfloat16), (num_experts,)
            )
            _check_device("routing_bias", routing_bias, self.device)
        self.routing_bias = routing_bias
        api._expert_weights_fp32(expert_weights_dtype)
        self.expert_weights_dtype = expert_weights_dtype
        # The routing rules the C++ layer checks (DeepSeekV3 groups, Llama4's K == 1, ...): a
        # token-free routing call raises them now rather than after a collective.
        self._route(
            no_tokens,
            torch.empty((0, num_experts), dtype=torch.float32, device=self.device),
        )

    def _check_mlp(self, mlp: "_ExpertMlp") -> "_ExpertMlp":
        """The expert MLP's options, checked as the operator checks them for this rank's window."""
        num_local = self.local_num_experts
        for name in _PER_EXPERT:
            tensor = getattr(mlp, name)
            # A tensor for all E experts (or another count) gets a message saying whose experts.
            wrong_count = isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and (
                tensor.shape[0] != num_local
            )
            if wrong_count:
                first = self.local_expert_offset
                raise ValueError(
                    f"{name}: expected this rank's {num_local} experts in dim 0 (experts [{first}, "
                    f"{first + num_local}) of num_experts {self.num_experts}, like gemm1_weights), "
                    f"got shape {tuple(tensor.shape)}"
                )
        _checks.check_expert_mlp(
            mlp.activation_type, mlp.gemm1_alpha, mlp.gemm1_beta, mlp.gemm1_clamp_limit,
            mlp.gemm1_bias, mlp.gemm2_bias, mlp.use_routing_scales_on_input, self.top_k, num_local,
            self.intermediate_size, self.hidden_size, None,
        )
        for name in _PER_EXPERT:
            if getattr(mlp, name) is not None:
                _check_device(name, getattr(mlp, name), self.device)
        return mlp

    def _check_fp8_scales(self, fp8: bool, gemm1_weights_scale, gemm2_weights_scale):
        """The block scales of FP8 weights (None with bf16 weights); returns them or None."""
        if not fp8:
            for name, scale in (("gemm1_weights_scale", gemm1_weights_scale),
                                ("gemm2_weights_scale", gemm2_weights_scale)):
                if scale is not None:
                    raise ValueError(f"{name}: expected None with bfloat16 weights, got a tensor")
            return None
        if self._mlp.use_routing_scales_on_input:
            raise ValueError("use_routing_scales_on_input: expected False with float8_e4m3fn weights, got True")
        block = _checks.FP8_BLOCK
        rows, hidden = self.gemm1_weights.shape[1], self.hidden_size
        for name, scale, shape in (
            ("gemm1_weights_scale", gemm1_weights_scale,
             (self.local_num_experts, rows // block, hidden // block)),
            ("gemm2_weights_scale", gemm2_weights_scale,
             (self.local_num_experts, hidden // block, self.intermediate_size // block)),
        ):
            _checks.check_tensor(name, scale, (torch.float32,), shape)
            _check_device(name, scale, self.device)
        return gemm1_weights_scale, gemm2_weights_scale

    def _experts_from_logits(self, logits, x, offset: int, num_local: int, x_scale=None):
        """The operator, routed from logits, over experts [offset, offset + num_local) of this
        rank, do_finalize=False: [gemm2_output, expert_weights, expanded_idx_to_permuted_idx].
        x_scale: the scales of e4m3 hidden states (FP8 experts), or None for bf16 ones."""
        routing = (self.num_experts, self.top_k, self.n_group or None, self.topk_group or None,
                   self.intermediate_size, offset, num_local)
        options = dict(routing_method_type=self.routing_method_type, do_finalize=False,
                       expert_weights_dtype=self.expert_weights_dtype)
        if self._fp8_scales is None:
            return api.trtllm_bf16_moe(
                logits, self.routing_bias, x, self.gemm1_weights, self.gemm2_weights, *routing,
                routed_scaling_factor=self.routed_scaling_factor, **options, **self._mlp._asdict(),
            )
        scale1, scale2 = self._fp8_scales
        return api.trtllm_fp8_block_scale_moe(
            logits, self.routing_bias, x, x_scale, self.gemm1_weights, scale1, self.gemm2_weights,
            scale2, *routing, self.routed_scaling_factor, **options, **self._fp8_mlp(),
        )

    def _experts_routed(self, routing, x, offset: int, num_local: int, x_scale=None):
        """The operator with routing given (packed, or an (ids, weights) pair) over experts
        [offset, offset + num_local) of this rank, do_finalize=False; x_scale: the scales of e4m3
        hidden states (FP8 experts), or None for bf16 ones."""
        sizes = (self.num_experts, self.top_k, None, None, self.intermediate_size, offset, num_local)
        if self._fp8_scales is None:
            return api.trtllm_bf16_routed_moe(
                routing, x, self.gemm1_weights, self.gemm2_weights, *sizes, do_finalize=False,
                **self._mlp._asdict(),
            )
        scale1, scale2 = self._fp8_scales
        return api.trtllm_fp8_block_scale_routed_moe(
            routing, None, x, x_scale, self.gemm1_weights, scale1, self.gemm2_weights, scale2,
            *sizes, None, do_finalize=False, **self._fp8_mlp(),
        )

    def _fp8_mlp(self) -> dict:
        """The expert MLP options as the FP8 entry points take them (no input-side weights)."""
        options = self._mlp._asdict()
        del options["use_routing_scales_on_input"]
        return options

    # ---- public ----------------------------------------------------------------------------------
    def __call__(
        self,
        hidden_states: torch.Tensor,
        routing_logits: Optional[torch.Tensor] = None,
        *,
        topk_ids: Union[None, torch.Tensor, Tuple[torch.Tensor, torch.Tensor]] = None,
        num_tokens_per_rank: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """The layer's output [T, H] bf16 for this rank's T tokens (T may differ per rank, even 0).

        Args:
            hidden_states: [T, H] bf16 on the weights' device.
            routing_logits: [T, E] fp32 or bf16 (routing by the constructor's method), or None
                when ``topk_ids`` is given.
            topk_ids: pre-computed routing, as in ``trtllm_bf16_routed_moe``: packed int32 [T, K]
                or an ``(ids int32 [T, K], weights bf16|fp32 [T, K])`` tuple. Every rank must
                pass the same kind of routing input with the same dtypes.
            num_tokens_per_rank: all-gather mode only: the token counts of all ranks (the same
                list on every rank). None: the counts are all-gathered (one host sync) and the
                ranks' routing inputs are checked to agree. Given: the first eager call with a
                list (and kind of routing input) checks with one small all-gather (one host
                sync) that every rank passed the same; later calls with a checked list
                synchronise nothing and can be captured in a CUDA graph. A list not yet checked
                raises inside CUDA graph capture or torch.compile: make one eager call with it
                first (docs/distributed.md "CUDA graphs").

        Returns:
            [T, H] bf16: the sum over each token's K slots of weight * expert output, as the
            single-GPU operator computes it on the whole problem (docs/distributed.md).

        Raises:
            TypeError, ValueError naming the argument. Where the call exchanges its counts through
            the host (mode "alltoall", "allgather" without ``num_tokens_per_rank``, and the
            layer's first call with ``num_tokens_per_rank``), a rank whose arguments are rejected
            tells the others, and every rank raises; ranks passing different kinds of routing
            input, or (first call with a list) different lists, raise on every rank. Otherwise
            only the rejected rank raises and the others wait in their next collective until the
            group's timeout.
        """
        try:
            x, logits, routed = self._check_call(hidden_states, routing_logits, topk_ids)
            if self.mode == "alltoall" and num_tokens_per_rank is not None:
                raise ValueError(
                    "num_tokens_per_rank: expected None in mode 'alltoall' (its counts go through the host)"
                )
            counts = None
            if num_tokens_per_rank is not None:
                counts = _check_counts(num_tokens_per_rank, self.world_size, self.rank, x.shape[0])
            error = None
        except (TypeError, ValueError) as raised:
            if self.mode == "allgather" and num_tokens_per_rank is not None:
                self._check_static_counts(None, 0, raised)  # raises
            x = logits = routed = counts = None
            error = raised
        if self.mode == "allgather":
            if counts is not None:
                self._check_static_counts(counts, _routing_kind(logits, routed), None)
            return self._forward_allgather(x, logits, routed, counts, error)
        return self._forward_alltoall(x, logits, routed, error)

    def reserve_workspace(self, max_num_tokens_per_rank: int) -> int:
        """Optional warm-up (CUDA): leaves a scratch block in PyTorch's caching allocator for calls
        of up to ``max_num_tokens_per_rank`` tokens on each rank (``fusedmoe.reserve_workspace``,
        sized for this layer's weights, FP8 ones included), so that the first such call finds it
        cached instead of calling cudaMalloc. Calls are correct without it; CUDA graph capture
        draws from the graph's own pool either way. Returns the bytes a call of that size needs
        (0 for CPU tensors, which need no workspace)."""
        _checks.check_int("max_num_tokens_per_rank", max_num_tokens_per_rank, 0)
        if self.device.type != "cuda":
            return 0
        # A rank computes at most every rank's tokens (all-gather; all-to-all: each token once).
        rows = max_num_tokens_per_rank * self.world_size
        reserved = api.reserve_workspace(
            rows, self.hidden_size, self.intermediate_size, self.num_experts, self.top_k,
            self.local_expert_offset, self.local_num_experts, self.device,
            weights_dtype=self.gemm1_weights.dtype,
        )
        if self.mode == "alltoall":
            reserved = max(reserved, api.reserve_workspace(
                max_num_tokens_per_rank, self.hidden_size, _ROUTING_PROBE_INTERMEDIATE,
                self.num_experts, self.top_k, 0, 1, self.device,
            ))
        return reserved

    # ---- argument checks -------------------------------------------------------------------------
    def _check_call(self, hidden_states, routing_logits, topk_ids):
        """Checks one call's tensors; returns (x, logits or None, (ids, weights or None) or None)."""
        _checks.check_tensor(
            "hidden_states", hidden_states, (torch.bfloat16,), (None, self.hidden_size)
        )
        _check_device("hidden_states", hidden_states, self.device)
        num_tokens = hidden_states.shape[0]
        device = self.device
        if (routing_logits is None) == (topk_ids is None):
            raise ValueError(
                "routing_logits: expected exactly one of routing_logits and topk_ids, got "
                + ("both" if routing_logits is not None else "neither")
            )
        if routing_logits is not None:
            _checks.check_tensor(
                "routing_logits", routing_logits, (torch.float32, torch.bfloat16),
                (num_tokens, self.num_experts),
            )
            _check_device("routing_logits", routing_logits, device)
            return hidden_states, routing_logits, None
        if isinstance(topk_ids, (tuple, list)):
            if len(topk_ids) != 2:
                raise ValueError(
                    f"topk_ids: expected a packed tensor or an (ids, weights) pair, got {len(topk_ids)} items"
                )
            ids, weights = topk_ids
            _checks.check_tensor("topk_ids", ids, (torch.int32,), (num_tokens, self.top_k))
            _check_device("topk_ids", ids, device)
            _checks.check_tensor(
                "topk_weights", weights, (torch.bfloat16, torch.float32), (num_tokens, self.top_k),
            )
            _check_device("topk_weights", weights, device)
            return hidden_states, None, (ids, weights)
        _checks.check_tensor("topk_ids", topk_ids, (torch.int32,), (num_tokens, self.top_k))
        _check_device("topk_ids", topk_ids, device)
        return hidden_states, None, (topk_ids, None)

    def _check_ranks_agree(self, error) -> None:
        """One all-gather of every rank's configuration (or its failure); raises on a mismatch."""
        if error is None:
            fields = [
                ("num_experts", self.num_experts),
                ("top_k", self.top_k),
                ("intermediate_size", self.intermediate_size),
                ("gemm1_weights", self.hidden_size),  # H, dim 2 of the weights
                ("mode", MODES.index(self.mode)),
                ("routing_method_type", self.routing_method_type),
                ("n_group", self.n_group),
                ("topk_group", self.topk_group),
                ("routed_scaling_factor", _float_bits(self.routed_scaling_factor)),
                ("routing_bias", _optional_dtype_code(self.routing_bias)),
                ("expert_weights_dtype", _dtype_code(self.expert_weights_dtype)),
                ("activation_type", self._mlp.activation_type),
                ("use_routing_scales_on_input", int(self._mlp.use_routing_scales_on_input)),
                ("weights_dtype", _dtype_code(self.gemm1_weights.dtype)),
            ] + [(name, _optional_dtype_code(getattr(self._mlp, name))) for name in _PER_EXPERT]
        else:
            fields = [(name, 0) for name in _CONFIG_FIELDS]
        values = [_error_code(error)] + [value for _, value in fields]
        mine = torch.tensor(values, dtype=torch.int64, device=self.device)
        table = mine.new_empty(self.world_size * len(values))
        dist.all_gather_into_tensor(table, mine, group=self.group)
        rows = table.view(self.world_size, len(values)).tolist()
        _raise_if_any_failed(error, [row[0] for row in rows])
        for column, (name, _) in enumerate(fields, start=1):
            column_values = [row[column] for row in rows]
            if len(set(column_values)) > 1:
                shown = ", ".join(f"rank {r}: {_shown(name, v)}" for r, v in enumerate(column_values))
                raise ValueError(f"{name}: expected the same value on every rank of the group, got {shown}")

    def _check_routing_bias_agrees(self) -> None:
        """routing_bias (when given; the ranks agree on that and on its dtype by now) bitwise the
        same on every rank: one all-gather of its bits. In the all-gather mode every rank routes
        every token with its own bias, so differing values would route a token differently on
        different ranks and give a wrong output without any error."""
        bias = self.routing_bias
        if bias is None:
            return
        bits = bias.view(torch.int16 if bias.dtype == torch.bfloat16 else torch.int32)
        mine = bits.to(torch.int64)
        table = mine.new_empty(self.world_size * mine.numel())
        dist.all_gather_into_tensor(table, mine, group=self.group)
        rows = table.view(self.world_size, -1)
        differs = (rows != rows[0]).any(dim=1).tolist()
        if not any(differs):
            return
        rank = differs.index(True)
        expert = int((rows[rank] != rows[0]).nonzero()[0, 0])
        values = rows[:, expert].to(bits.dtype).view(bias.dtype).tolist()
        others = ", ".join(str(r) for r, d in enumerate(differs) if d)
        raise ValueError(
            f"routing_bias: expected the same values (bitwise) on every rank of the group, got "
            f"ranks {others} differing from rank 0 (first at expert {expert}: {values[0]} on rank "
            f"0, {values[rank]} on rank {rank})"
        )

    def _check_static_counts(self, counts, kind: int, error) -> None:
        """The all-gather mode's ``num_tokens_per_rank`` checked across ranks, once per (list,
        routing kind): one all-gather of (failure, kind, list) on the first eager call with them,
        then remembered, so that later calls run no extra collective. Raises on every rank that
        checks if any rank failed or the lists or kinds differ; with ``error`` it always raises
        (telling the others first when no list was checked yet, for then every rank checks).

        Inside CUDA graph capture or torch.compile a list not yet checked raises (the check reads
        its result on the host). A rank whose list was checked before does not check again, so
        a rank passing a list it passed before while another passes a different one (or None)
        is not caught (docs/distributed.md "Errors")."""
        key = None if error is not None else (tuple(counts), kind)
        if key is not None and key in self._checked_counts:
            return
        capturing = _capturing(self.device)
        if error is not None and (self._checked_counts or capturing):
            raise error  # the others check nothing now: telling them would be a stray collective
        if capturing:
            raise ValueError(
                f"num_tokens_per_rank: {list(counts)} has not been checked across ranks yet (the "
                f"first call with a list checks it, reading the result on the host); make one "
                f"eager call with it before capturing a CUDA graph or compiling"
            )
        world = self.world_size
        if error is None:
            values = [0, kind] + list(counts)
        else:
            values = [_error_code(error), 0] + [0] * world
        mine = torch.tensor(values, dtype=torch.int64, device=self.device)
        table = mine.new_empty(world * len(values))
        self._collective("check_counts", 0, 0, dist.all_gather_into_tensor, table, mine,
                         group=self.group)
        rows = table.view(world, len(values)).tolist()
        _raise_if_any_failed(error, [row[0] for row in rows])
        lists = [row[2:] for row in rows]
        if any(other != lists[0] for other in lists):
            shown = ", ".join(f"rank {r}: {c}" for r, c in enumerate(lists))
            raise ValueError(
                f"num_tokens_per_rank: expected the same list on every rank of the group, got "
                f"{shown}"
            )
        _check_same_kind([row[1] for row in rows], kind)
        if len(self._checked_counts) >= _MAX_CHECKED_COUNTS:
            self._checked_counts.clear()  # on every rank alike: their sets are the same
        self._checked_counts.add(key)

    # ---- all-gather / ordered reduce-scatter ---------------------------------------------------
    def _forward_allgather(self, x, logits, routed, counts, error):
        world = self.world_size
        if counts is None:
            counts = self._gather_counts(x, logits, routed, error)
        num_tokens = x.shape[0]
        total = sum(counts)
        if total == 0:
            return x.new_empty((0, self.hidden_size))

        all_x, all_x_scale = self._gather_hidden(x, counts)
        offset, num_local = self.local_expert_offset, self.local_num_experts
        if logits is not None:
            all_logits = self._all_gather_rows("dispatch_logits", logits, counts)
            gemm2_output, expert_weights, permuted = self._experts_from_logits(
                all_logits, all_x, offset, num_local, all_x_scale)
        else:
            ids, weights = routed
            all_ids = self._all_gather_rows("dispatch_ids", ids, counts)
            if weights is not None:
                all_ids = (all_ids, self._all_gather_rows("dispatch_weights", weights, counts))
            gemm2_output, expert_weights, permuted = self._experts_routed(
                all_ids, all_x, offset, num_local, all_x_scale)

        # This rank's partial: the operator's finalize accumulator over its local slots, not
        # rounded to bf16 (fp32, ascending k; weights of 1 when they scaled the input).
        rows = permuted.view(total, self.top_k)
        weights = self._combine_weights(expert_weights)
        partial = _weighted_sum(gemm2_output, rows, rows >= 0, weights)

        # Ordered reduce-scatter: every rank sends each rank the partials of that rank's tokens
        # (the bytes of an fp32 reduce-scatter) and sums what it receives in rank order.
        received = partial.new_empty((world * num_tokens, self.hidden_size))
        self._all_to_all("combine_partials", received, partial, [num_tokens] * world, counts)
        received = received.view(world, num_tokens, self.hidden_size)
        out = received[0].clone()
        for r in range(1, world):
            out += received[r]
        return out.to(torch.bfloat16)

    def _gather_counts(self, x, logits, routed, error) -> List[int]:
        """All-gathers (failure, T, routing kind) of every rank (host sync): every rank raises if
        any rank rejected its arguments or the ranks' routing input kinds differ."""
        if error is None:
            mine = [0, x.shape[0], _routing_kind(logits, routed)]
        else:
            mine = [_error_code(error), 0, 0]
        mine = torch.tensor(mine, dtype=torch.int64, device=self.device)
        table = mine.new_empty(self.world_size * 3)
        self._collective("gather_counts", 0, 0, dist.all_gather_into_tensor, table, mine,
                         group=self.group)
        rows = table.view(self.world_size, 3).tolist()
        _raise_if_any_failed(error, [row[0] for row in rows])
        _check_same_kind([row[2] for row in rows], _routing_kind(logits, routed))
        return [row[1] for row in rows]

    def _gather_hidden(self, x, counts):
        """Every rank's rows of x in rank order, and their scales (None with bf16 experts). With
        FP8 experts the rows travel quantised (``_quantized_rows``) and the operator takes them
        as e4m3 hidden states: 1 + 1/32 bytes per value instead of 2, bitwise the same result."""
        if self._fp8_scales is None:
            return self._all_gather_rows("dispatch_hidden", x, counts), None
        codes, scale = _quantized_rows(x)
        all_codes = self._all_gather_rows("dispatch_hidden", codes, counts)
        all_scale = self._all_gather_rows("dispatch_hidden_scale", scale, counts)
        return all_codes.view(torch.float8_e4m3fn), all_scale.t().contiguous()

    def _all_gather_rows(self, name, tensor, counts):
        """[sum(counts), ...] rows of every rank in rank order (uneven counts padded, then compacted)."""
        world, longest = self.world_size, max(counts)
        tail = tuple(tensor.shape[1:])
        if tensor.shape[0] == longest:
            padded = tensor.contiguous()
        else:
            padded = tensor.new_zeros((longest,) + tail)
            padded[: tensor.shape[0]] = tensor
        gathered = tensor.new_empty((world * longest,) + tail)
        row_bytes = math.prod(tail) * padded.element_size()
        moved = (world - 1) * longest * row_bytes
        self._collective(name, moved, moved, dist.all_gather_into_tensor, gathered, padded,
                         group=self.group)
        if all(c == longest for c in counts):
            return gathered
        index = torch.cat([
            torch.arange(r * longest, r * longest + c, device=tensor.device)
            for r, c in enumerate(counts)
        ])
        return gathered.index_select(0, index)

    # ---- all-to-all dispatch / combine ---------------------------------------------------------
    def _forward_alltoall(self, x, logits, routed, error):
        world, top_k, hidden = self.world_size, self.top_k, self.hidden_size
        if error is not None:  # take part in the count exchange, telling the others, then raise
            failed = torch.zeros((world, 4), dtype=torch.int64, device=self.device)
            failed[:, 2] = _error_code(error)
            self._exchange_counts(failed, error, 0)
        num_tokens = x.shape[0]
        ids, weights = self._route(x, logits) if logits is not None else _unpack(routed)
        ids = ids.to(torch.int64)
        valid = (ids >= 0) & (ids < self.num_experts)  # ids outside [0, E): nowhere, like the operator
        owner = torch.where(valid, ids // self.local_num_experts, world)  # [T, K], W = no rank

        # Per destination rank: rows (tokens with >= 1 slot there), slots, and the routing kind
        # (the dispatch's collectives depend on it: every rank must pass the same). One host sync.
        # (Comparisons, not scatter or bincount: nothing here is nondeterministic on CUDA.)
        on_rank = owner.unsqueeze(2) == torch.arange(world, device=x.device)  # [T, K, W]
        hit = on_rank.any(dim=1)  # [T, W]
        kind = _routing_kind(logits, routed)
        counts = torch.stack([
            hit.sum(0), on_rank.sum((0, 1)),
            torch.zeros(world, dtype=torch.int64, device=x.device),  # no failure
            torch.full((world,), kind, dtype=torch.int64, device=x.device),
        ], dim=1)  # [W, 4] int64
        send_rows, send_slots, recv_rows, recv_slots = self._exchange_counts(counts, None, kind)

        # Dispatch: each (destination, token) pair once, destinations in rank order, tokens
        # ascending; the slots owned elsewhere are sent as id -1 (non-local there).
        pairs = torch.nonzero_static(hit.t().flatten(), size=sum(send_rows)).squeeze(1)
        dest, token = pairs // num_tokens, pairs % num_tokens
        send_ids = torch.where(
            owner.index_select(0, token) == dest.unsqueeze(1), ids.index_select(0, token), -1
        )
        recv_x, recv_x_scale = self._dispatch_hidden(x, token, recv_rows, send_rows)
        recv_routing = self._dispatch_routing(send_ids, weights, token, recv_rows, send_rows)

        # The owner computes its slots and returns one unweighted row per slot (with
        # use_routing_scales_on_input: computed on the weighted input), in the order
        # (source rank, source token, k) ascending: the order the source sent them in.
        gemm2_output, _, permuted = self._experts_routed(
            recv_routing, recv_x, self.local_expert_offset, self.local_num_experts, recv_x_scale)
        local = torch.nonzero_static(permuted >= 0, size=sum(recv_slots)).squeeze(1)
        send_y = gemm2_output.index_select(0, permuted.index_select(0, local))
        recv_y = x.new_empty((sum(send_slots), hidden))
        self._all_to_all("combine_outputs", recv_y, send_y, send_slots, recv_slots)

        # Combine: recv_y holds the slots sorted by (owner rank, slot t*K+k); the row of slot s is
        # its place in that order (the inverse of the stable sort), then the operator's finalize.
        by_owner = torch.sort(owner.flatten(), stable=True).indices
        row_of_slot = torch.argsort(by_owner).view(num_tokens, top_k)
        combine_weights = self._combine_weights(weights)
        return _weighted_sum(recv_y, row_of_slot, valid, combine_weights).to(torch.bfloat16)

    def _dispatch_hidden(self, x, token, recv_rows, send_rows):
        """Sends each dispatched row of x to its destination; returns (rows, their scales or None).
        With FP8 experts the rows travel quantised (``_quantized_rows``): 1 + 1/32 bytes per value
        instead of 2, and the owner's operator call takes them as e4m3 hidden states with the
        same result."""
        num_rows = sum(recv_rows)
        if self._fp8_scales is None:
            send_x = x.index_select(0, token)
            recv_x = x.new_empty((num_rows, self.hidden_size))
            self._all_to_all("dispatch_hidden", recv_x, send_x, recv_rows, send_rows)
            return recv_x, None
        codes, scale = _quantized_rows(x)
        send_codes = codes.index_select(0, token)
        send_scale = scale.index_select(0, token)
        recv_codes = send_codes.new_empty((num_rows, self.hidden_size))
        recv_scale = send_scale.new_empty((num_rows, send_scale.shape[1]))
        self._all_to_all("dispatch_hidden", recv_codes, send_codes, recv_rows, send_rows)
        self._all_to_all("dispatch_hidden_scale", recv_scale, send_scale, recv_rows, send_rows)
        return recv_codes.view(torch.float8_e4m3fn), recv_scale.t().contiguous()

    def _dispatch_routing(self, send_ids, weights, token, recv_rows, send_rows):
        """Sends each dispatched row's K ids (and, with use_routing_scales_on_input, weights) to
        its destination; returns the routing input of the owner's operator call.

        The owner's outputs are unweighted, so without use_routing_scales_on_input it needs the
        ids only: packed words with zero weight bits. With it the weights scale the owner's
        input, so they travel as they are: bf16 ones in the packed words' low bits, fp32 ones
        beside plain ids (a second all-to-all), so that the owner computes on bf16(w * x) with
        the very w of the single-GPU call.
        """
        send_ids = send_ids.to(torch.int32)
        num_rows = sum(recv_rows)
        if not self._mlp.use_routing_scales_on_input:
            send_packed = (send_ids << 16).contiguous()
        elif weights.dtype == torch.bfloat16:
            send_packed = api.pack_topk(send_ids, weights.index_select(0, token)).contiguous()
        else:
            recv_ids = send_ids.new_empty((num_rows, self.top_k))
            self._all_to_all("dispatch_ids", recv_ids, send_ids.contiguous(), recv_rows, send_rows)
            send_weights = weights.index_select(0, token).contiguous()
            recv_weights = send_weights.new_empty((num_rows, self.top_k))
            self._all_to_all("dispatch_weights", recv_weights, send_weights, recv_rows, send_rows)
            return recv_ids, recv_weights
        recv_packed = send_packed.new_empty((num_rows, self.top_k))
        self._all_to_all("dispatch_ids", recv_packed, send_packed, recv_rows, send_rows)
        return recv_packed

    def _combine_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """The weights the combine multiplies the expert rows by: the routing weights, or bf16
        ones when they already scaled the input (the operator's finalize weighs those rows by 1)."""
        if self._mlp.use_routing_scales_on_input:
            return torch.ones(weights.shape, dtype=torch.bfloat16, device=weights.device)
        return weights

    def _exchange_counts(self, counts, error, kind: int):
        """All-to-all of [rows, slots, failure, routing kind] per destination (host sync); returns
        the send and receive rows and slots per rank, or raises on every rank if any rank failed
        or the ranks' routing input kinds differ (each rank receives every rank's kind)."""
        world = self.world_size
        received = torch.empty_like(counts)
        self._all_to_all("exchange_counts", received, counts, None, None, record_bytes=False)
        host = torch.cat([counts, received]).tolist()
        _raise_if_any_failed(error, [row[2] for row in host[world:]])
        _check_same_kind([row[3] for row in host[world:]], kind)
        return ([c[0] for c in host[:world]], [c[1] for c in host[:world]],
                [c[0] for c in host[world:]], [c[1] for c in host[world:]])

    def _route(self, x, logits):
        """(ids int32 [T, K], weights [T, K]): the operator's routing of this rank's tokens.

        Routing-only is the operator called with a 1-expert window on zero weights of the
        smallest intermediate size: its ids (``routing_replay_out``) and ``expert_weights`` are
        bitwise those of the whole-layer call, for a few kernels of tiny work.
        """
        if self._routing_probe_weights is None:
            inter, hidden = _ROUTING_PROBE_INTERMEDIATE, self.hidden_size
            self._routing_probe_weights = (
                torch.zeros((1, 2 * inter, hidden), dtype=torch.bfloat16, device=self.device),
                torch.zeros((1, hidden, inter), dtype=torch.bfloat16, device=self.device),
            )
        w1, w2 = self._routing_probe_weights
        ids = torch.empty((x.shape[0], self.top_k), dtype=torch.int16, device=x.device)
        _, weights, _ = api.trtllm_bf16_moe(
            logits, self.routing_bias, x, w1, w2, self.num_experts, self.top_k,
            self.n_group or None, self.topk_group or None, _ROUTING_PROBE_INTERMEDIATE, 0, 1,
            routed_scaling_factor=self.routed_scaling_factor,
            routing_method_type=self.routing_method_type, do_finalize=False,
            routing_replay_out=ids, expert_weights_dtype=self.expert_weights_dtype,
        )
        return ids.to(torch.int32), weights

    # ---- collectives -----------------------------------------------------------------------------
    def _all_to_all(self, name, output, input, output_splits, input_splits, record_bytes=True):
        """``all_to_all_single`` over dim 0, with its bytes to and from the other ranks logged."""
        received = sent = 0
        if record_bytes:
            row_bytes = math.prod(output.shape[1:]) * output.element_size()
            received = (sum(output_splits) - output_splits[self.rank]) * row_bytes
            sent = (sum(input_splits) - input_splits[self.rank]) * row_bytes
        self._collective(name, received, sent, dist.all_to_all_single, output, input,
                         output_splits, input_splits, group=self.group)

    def _collective(self, name, received, sent, function, *args, **kwargs):
        """Runs one collective, logged in ``collective_log`` when that is a list."""
        log = self.collective_log
        if log is None:
            function(*args, **kwargs)
            return
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)  # the layer's, not the current device's
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            function(*args, **kwargs)
            end.record(stream)
        else:
            start = time.perf_counter()
            function(*args, **kwargs)
            end = time.perf_counter()
        kind = "all_gather" if function is dist.all_gather_into_tensor else "all_to_all"
        log.append(CollectiveRecord(name, kind, received, sent, start, end))


# ---- helpers ---------------------------------------------------------------------------------------
def _quantized_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [T, H] bf16 quantised as the FP8 operator quantises its hidden states (per token and
    128-column group; ``fusedmoe.fp8.quantize_fp8_activations``, bitwise the operator's rule), in
    the row-major forms a collective moves: (e4m3 codes as uint8 [T, H], fp32 scales [T, H / 128])."""
    codes, scale = fp8.quantize_fp8_activations(x)  # [T, H] e4m3, [H / 128, T]
    return codes.view(torch.uint8), scale.t().contiguous()


class _ExpertMlp(NamedTuple):
    """The operator's expert MLP options, with its keyword names (passed as ``**mlp._asdict()``)."""

    activation_type: int
    gemm1_alpha: Optional[torch.Tensor]  # fp32 [E_loc]
    gemm1_beta: Optional[torch.Tensor]  # fp32 [E_loc]
    gemm1_clamp_limit: Optional[torch.Tensor]  # fp32 [E_loc]
    gemm1_bias: Optional[torch.Tensor]  # [E_loc, 2I or I]
    gemm2_bias: Optional[torch.Tensor]  # [E_loc, H]
    use_routing_scales_on_input: bool


# The per-expert tensors among the options (dim 0: this rank's experts).
_PER_EXPERT = ("gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit", "gemm1_bias", "gemm2_bias")

# Argument names a rank's failure is reported by to the other ranks (code = 1 + index).
_ARGUMENTS = (
    "gemm1_weights", "gemm2_weights", "num_experts", "top_k", "intermediate_size", "mode",
    "routing_method_type", "n_group", "topk_group", "routed_scaling_factor", "routing_bias",
    "expert_weights_dtype", "hidden_states", "routing_logits", "topk_ids", "topk_weights",
    "num_tokens_per_rank", "activation_type", "use_routing_scales_on_input",
    "gemm1_weights_scale", "gemm2_weights_scale",
) + _PER_EXPERT
_CONFIG_FIELDS = (
    "num_experts", "top_k", "intermediate_size", "gemm1_weights", "mode", "routing_method_type",
    "n_group", "topk_group", "routed_scaling_factor", "routing_bias", "expert_weights_dtype",
    "activation_type", "use_routing_scales_on_input", "weights_dtype",
) + _PER_EXPERT


def _error_code(error) -> int:
    """0 for no error, else 1 + the index of the argument the message starts with."""
    if error is None:
        return 0
    name = str(error).split(":", 1)[0]
    return 1 + (_ARGUMENTS.index(name) if name in _ARGUMENTS else len(_ARGUMENTS))


def _raise_if_any_failed(error, codes) -> None:
    """Raises this rank's own error, else a ValueError naming another rank's rejected argument."""
    if error is not None:
        raise error
    for rank, code in enumerate(codes):
        if code:
            name = _ARGUMENTS[code - 1] if code - 1 < len(_ARGUMENTS) else "arguments"
            raise ValueError(
                f"{name}: rejected on rank {rank} (that rank's error says why); every rank raises"
            )


def _check_device(name: str, tensor: torch.Tensor, device: torch.device) -> None:
    if tensor.device != device:
        raise ValueError(f"{name}: expected device {device} (that of the layer's weights), got {tensor.device}")


def _resolve_group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("group: torch.distributed is not initialized (call init_process_group first)")
    if group is None:
        group = dist.group.WORLD
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group: expected a torch.distributed ProcessGroup or None, got {type(group).__name__}")
    if dist.get_rank(group) < 0:
        raise ValueError("group: this process is not a member of the group")
    return group


def _check_backend(group, device: torch.device) -> None:
    """The group must have a backend that moves tensors of ``device``'s type."""
    backend = str(dist.get_backend(group))
    if ":" in backend:  # a multi-device group, e.g. "cpu:gloo,cuda:nccl"
        per_device = dict(item.split(":", 1) for item in backend.split(","))
        chosen = per_device.get(device.type)
    else:
        chosen = backend
    allowed = _BACKENDS_FOR_DEVICE.get(device.type, ())
    if chosen not in allowed:
        raise ValueError(
            f"group: backend {backend!r} does not move {device.type} tensors (the weights are on "
            f"{device}); expected a group with backend {' or '.join(allowed) or 'cpu or cuda'}"
        )
    _check_bound_device(group, device)


def _check_bound_device(group, device: torch.device) -> None:
    """A group bound to one GPU (``init_process_group(device_id=...)``) moves that GPU's tensors."""
    bound = getattr(group, "bound_device_id", None)
    if bound is not None and device.type == "cuda" and torch.device(bound) != device:
        raise ValueError(f"group: bound to {bound}, but the weights are on {device}")


def _check_counts(num_tokens_per_rank, world: int, rank: int, num_tokens: int) -> List[int]:
    if isinstance(num_tokens_per_rank, torch.Tensor) or not isinstance(num_tokens_per_rank, (list, tuple)):
        raise TypeError(
            f"num_tokens_per_rank: expected a list of {world} ints, got {type(num_tokens_per_rank).__name__}"
        )
    if len(num_tokens_per_rank) != world:
        raise ValueError(
            f"num_tokens_per_rank: expected {world} entries (one per rank), got {len(num_tokens_per_rank)}"
        )
    counts = [_checks.check_int("num_tokens_per_rank", c, 0) for c in num_tokens_per_rank]
    if counts[rank] != num_tokens:
        raise ValueError(
            f"num_tokens_per_rank: entry {rank} (this rank) is {counts[rank]}, but hidden_states "
            f"has {num_tokens} rows"
        )
    return counts


def _check_same_kind(kinds: List[int], mine: int) -> None:
    """Raises if the ranks' routing input kinds (``_routing_kind``, one per rank) differ, naming
    the argument this rank passed (``mine``: its kind)."""
    if len(set(kinds)) > 1:
        shown = ", ".join(f"rank {r}: {_KIND_NAMES[k]}" for r, k in enumerate(kinds))
        name = "routing_logits" if mine in (0, 1) else "topk_ids"
        raise ValueError(
            f"{name}: expected the same kind of routing input on every rank, got {shown}"
        )


def _capturing(device: torch.device) -> bool:
    """Inside CUDA graph capture (on ``device``'s current stream) or torch.compile's tracing."""
    if torch.compiler.is_compiling():
        return True
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def _backend_device(group) -> torch.device:
    """A device whose tensors the group's backend moves: its bound GPU, else the current GPU for
    NCCL, else the CPU. Only for telling the other ranks that this one failed."""
    bound = getattr(group, "bound_device_id", None)
    if bound is not None:
        return torch.device(bound)
    if "nccl" in str(dist.get_backend(group)) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _routing_kind(logits, routed) -> int:
    if logits is not None:
        return 0 if logits.dtype == torch.float32 else 1
    weights = routed[1]
    if weights is None:
        return 2
    return 3 if weights.dtype == torch.bfloat16 else 4


def _unpack(routed):
    ids, weights = routed
    return api.unpack_topk(ids) if weights is None else (ids, weights)


def _weighted_sum(rows: torch.Tensor, row_of_slot: torch.Tensor, valid: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """The operator's finalize before its bf16 rounding: fp32 [T, H] with, for every token t,
    ``acc = 0; for k ascending where valid[t, k]: acc = fmaf(weights[t, k], rows[row_of_slot[t, k]], acc)``.

    rows: [N, H] bf16 unweighted expert outputs; row_of_slot, valid, weights: [T, K].
    """
    num_tokens, top_k = row_of_slot.shape
    acc = torch.zeros((num_tokens, rows.shape[1]), dtype=torch.float32, device=rows.device)
    if rows.shape[0] == 0:  # no slot anywhere: nothing to add
        return acc
    last = rows.shape[0] - 1
    for k in range(top_k):
        # Gather the slot's row; slots that are not valid read some row and are masked out.
        y = rows.index_select(0, row_of_slot[:, k].clamp(0, last))
        acc = _accumulate(acc, weights[:, k], y, valid[:, k])
    return acc


def _accumulate(acc, weight, y, valid):
    """``acc + weight * y`` per token row with the operator's finalize rounding (one fmaf), where
    ``valid``; ``acc`` unchanged elsewhere (the slot is skipped, whatever ``y`` holds).

    acc: [T, H] fp32; weight: [T] bf16 or fp32; y: [T, H] bf16; valid: [T] bool.
    """
    if weight.dtype == torch.bfloat16:
        # bf16 * bf16 is exact in fp32 (8 + 8 significant bits), so one fp32 add rounds like
        # fmaf (products below fp32's normal range, 2^-126, aside), with or without contraction.
        updated = torch.addcmul(acc, y, weight.float().unsqueeze(1))
    else:
        updated = _fma_fp32(weight.unsqueeze(1), y, acc)
    return torch.where(valid.unsqueeze(1), updated, acc)


def _fma_fp32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``fmaf(a, b, c)`` elementwise (broadcasting): a * b + c rounded once to fp32, exactly.

    a, b, c hold fp32 values (any float dtype that widens exactly). The product of two fp32
    values has at most 48 significant bits, so it is exact in fp64; TwoSum gives the fp64 sum
    and its exact error; rounding the sum to fp32 is then correct except when the sum lies exactly
    halfway between two fp32 values while the error is not zero, which is fixed up toward the
    error's side. Costs ~15 fp64 elementwise passes: used where weights are fp32.
    """
    product = a.double() * b.double()  # exact
    addend = c.double()
    total = product + addend
    back = total - product
    error = (product - (total - back)) + (addend - back)  # TwoSum: total + error == a*b + c
    rounded = total.float()
    below = total - rounded.double()  # exact: the distance from the fp32 result to the sum
    toward = torch.where(below > 0, float("inf"), float("-inf")).to(torch.float32)
    neighbour = torch.nextafter(rounded, toward)
    halfway = (below != 0) & ((neighbour.double() - total) == below) & torch.isfinite(rounded)
    past = halfway & (error != 0) & ((error > 0) == (below > 0))
    return torch.where(past, neighbour, rounded)


def _float_bits(value: float) -> int:
    return int(torch.tensor(value, dtype=torch.float64).view(torch.int64).item())


def _dtype_code(dtype: torch.dtype) -> int:
    return {torch.float32: 0, torch.bfloat16: 1}.get(dtype, 2)


def _optional_dtype_code(tensor: Optional[torch.Tensor]) -> int:
    """-1 for an absent optional tensor, else its dtype's code."""
    return -1 if tensor is None else _dtype_code(tensor.dtype)


def _shown(name: str, value: int):
    if name == "mode":
        return repr(MODES[value])
    if name == "routed_scaling_factor":
        return torch.tensor(value, dtype=torch.int64).view(torch.float64).item()
    if name == "gemm1_weights":
        return f"hidden size {value}"
    if name in ("routing_bias", "expert_weights_dtype") + _PER_EXPERT:
        return {-1: "None", 0: "float32", 1: "bfloat16"}.get(value, "other")
    if name == "activation_type":
        return api.ActivationType(value).name
    if name == "use_routing_scales_on_input":
        return bool(value)
    if name == "weights_dtype":
        return {1: "bfloat16", 2: "float8_e4m3fn"}.get(value, "other")
    return value
