"""``experts_implementation="fusedmoe"``: fusedmoe as a Hugging Face transformers experts backend.

transformers (>= 5.7) dispatches the experts of its MoE models through one registry,
``transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS``; the experts module's forward
``(hidden_states [T, H], top_k_index [T, K], top_k_weights [T, K])`` receives routing the model's
own router computed, which is exactly fusedmoe's routed operator. So::

    from fusedmoe.integrations import transformers as fusedmoe_hf
    fusedmoe_hf.register()                       # once per process, before building models
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.bfloat16,
                                                 experts_implementation="fusedmoe")

The router, shared experts and everything else stay in the model's code; only the routed experts
run in fusedmoe. Llama 4 does not route its experts through the registry: ``register()`` also
teaches ``Llama4TextMoe`` to honour the same switch (routing scales applied to the expert input).

What happens per experts module (docs/transformers.md has the table):

* Supported: the module's layout flags (``is_transposed``, ``has_gate``, ``has_bias``) give the
  weight layout; its gating (``_apply_gate``, or ``act_fn`` for non-gated experts) is identified
  by evaluating it on a probe tensor against the activations fusedmoe computes (SwiGLU, GeGLU,
  clamped SwiGLU with alpha/beta/limit as GPT-OSS, ...), so an override the table does not know
  can never be mistaken for one it does.
* Raised (``NotImplementedError`` naming the module class, on the first forward): a gating or
  activation fusedmoe does not compute (a soft-capped SwiGLU, a clamp after the activation, ReGLU),
  a post-expert norm, sizes fusedmoe does not take (H, I not multiples of 8, E > 1024, K > 32);
  on CUDA, a GPU that is not Hopper (sm_90) (``RuntimeError``). The model can never use fusedmoe:
  choose another ``experts_implementation``.
* Fallen back to transformers' ``"grouped_mm"`` implementation, with one warning per module class
  and reason: a model not in bfloat16 (fusedmoe computes in bf16; a float32 model is not
  downcast behind your back: load it with ``dtype=torch.bfloat16``), autograd (grad mode on and a
  weight or the input requiring grad: fusedmoe has no backward), a device that is neither CUDA
  nor CPU. The fallback computes what the model defines, so results are never silently different.

Weights are converted once, at the first forward (or by ``prepare(model)``), into fusedmoe's
canonical layout (``fusedmoe.prepare_weights``) and cached on the module; the cache is rebuilt
when a weight tensor is replaced (``.to()``, ``load_state_dict(assign=True)``) or modified in
place through autograd-visible ops (its ``_version`` changes). Writes through ``param.data`` are
invisible: call ``prepare(model, refresh=True)`` after them. MEMORY: the cache is a second copy of
the experts' weights (for Qwen3-30B-A3B, 54 GiB of its 57 GiB in bf16). ``convert_in_place(model)``
keeps one copy instead: the parameters themselves are rewritten into the canonical layout (one
expert at a time), at the price that the module then only works with fusedmoe (no fallback: autograd
or another ``experts_implementation`` raises or misreads them) and ``state_dict()`` holds the
canonical layout until ``restore_layout(model)``.

FP8 checkpoints (transformers' ``FP8Experts``, FineGrainedFP8) dispatch through transformers' FP8
experts registry, where ``register()`` adds "fusedmoe" too: their e4m3 weights and 128 x 128 block
scales run fusedmoe's FP8 block-scale variant (``fusedmoe_fp8_experts_forward``, docs/transformers.md).

CPU tensors run fusedmoe's CPU reference (slow, exact to the contract). Under ``torch.compile``
the conversion cannot run inside the trace: run one eager forward (``generate`` does: its prefill is
eager) or call ``prepare(model)`` before compiling; staleness is not checked inside compiled code.
"""

import dataclasses
import functools
import warnings
import weakref
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

import fusedmoe
from fusedmoe import _checks, _layouts
import fusedmoe.fp8  # noqa: F401  (fusedmoe.fp8.prepare_fp8_weights)

NAME = "fusedmoe"
MIN_TRANSFORMERS_VERSION = "5.7.0"  # the first release that accepts registered experts_implementation names

# FlashInfer's ActivationType numbering (fusedmoe's activation_type argument).
GELU, RELU, SILU, SWIGLU, GEGLU, RELU2, GEGLU_TANH = 0, 1, 2, 3, 4, 6, 8
_ACTIVATION_NAMES = {GELU: "Gelu", RELU: "Relu", SILU: "Silu", SWIGLU: "Swiglu", GEGLU: "Geglu",
                     RELU2: "Relu2", GEGLU_TANH: "GegluTanh"}


class UnsupportedExperts(NotImplementedError):
    """An experts module whose math fusedmoe does not compute (raised on its first forward)."""


# ---- registration -------------------------------------------------------------------------------
def _import_moe_registry():
    """transformers.integrations.moe, or an ImportError naming what is missing."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "fusedmoe.integrations.transformers needs the `transformers` package "
            f"(>= {MIN_TRANSFORMERS_VERSION}): pip install 'transformers>={MIN_TRANSFORMERS_VERSION}'"
        ) from error
    version = getattr(transformers, "__version__", "0")
    from packaging.version import Version  # a dependency of transformers

    try:
        too_old = Version(version) < Version(MIN_TRANSFORMERS_VERSION)
    except Exception:  # an unparsable local version: let the attribute checks decide
        too_old = False
    if too_old:
        raise ImportError(
            f"fusedmoe.integrations.transformers needs transformers >= {MIN_TRANSFORMERS_VERSION} "
            f"(the experts registry that accepts new experts_implementation names), found {version}: "
            f"pip install 'transformers>={MIN_TRANSFORMERS_VERSION}'"
        )
    try:
        from transformers.integrations import moe
    except ImportError as error:
        raise ImportError(
            f"fusedmoe.integrations.transformers: transformers {version} has no "
            "transformers.integrations.moe (the experts registry)"
        ) from error
    for attribute in ("ALL_EXPERTS_FUNCTIONS", "ExpertsInterface", "use_experts_implementation"):
        if not hasattr(moe, attribute):
            raise ImportError(
                f"fusedmoe.integrations.transformers: transformers {version} lacks "
                f"transformers.integrations.moe.{attribute} (needs >= {MIN_TRANSFORMERS_VERSION})"
            )
    return moe


def _import_fp8_registry():
    """transformers' registry of FP8 experts forwards (FineGrainedFP8 checkpoints), or None when
    this transformers has none."""
    try:
        from transformers.integrations import finegrained_fp8
    except ImportError:
        return None
    return getattr(finegrained_fp8, "FP8ExpertsInterface", None)


def register() -> None:
    """Adds ``"fusedmoe"`` to transformers' experts registry (idempotent), and to its FP8 experts
    registry (``FP8Experts`` of FineGrainedFP8 checkpoints) where transformers has one.

    After it, ``from_pretrained(..., experts_implementation="fusedmoe")``, ``from_config(config,
    experts_implementation="fusedmoe")`` and ``model.set_experts_implementation("fusedmoe")`` select
    fusedmoe. It also patches ``Llama4TextMoe`` (whose experts bypass the registry) to honour the
    switch; Llama 4 modules built before ``register()`` keep their own forward.

    Raises:
        ImportError: transformers is missing, older than 5.7, or lacks the registry.
    """
    moe = _import_moe_registry()
    moe.ExpertsInterface.register(NAME, fusedmoe_experts_forward)
    fp8_interface = _import_fp8_registry()
    if fp8_interface is not None:
        fp8_interface.register(NAME, fusedmoe_fp8_experts_forward)
    _patch_llama4()


# ---- what an experts module computes ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExpertsSpec:
    """How an experts module stores its weights and what its expert MLP computes."""

    gated: bool  # gemm1 has gate and up rows (act(gate) * up) or only up rows (act(up))
    gate_up: str  # order of the gate/up rows in the checkpoint (fusedmoe.prepare_weights' names)
    transposed: bool  # stored for x @ W ([E, H, 2I] and [E, I, H])
    activation_type: int  # FlashInfer numbering
    has_bias: bool
    swiglu_alpha: Optional[float] = None  # clamped SwiGLU: gate' * sigmoid(alpha gate') * (up' + beta)
    swiglu_beta: Optional[float] = None
    swiglu_limit: Optional[float] = None
    scales_on_input: bool = False  # Llama 4: the routing weight scales the expert input (K == 1)

    def describe(self) -> str:
        """One line for messages and the tests."""
        text = f"{_ACTIVATION_NAMES[self.activation_type]}"
        if self.swiglu_limit is not None:
            text += f"(alpha={self.swiglu_alpha:g}, beta={self.swiglu_beta:g}, limit={self.swiglu_limit:g})"
        text += f", {'gated ' + self.gate_up if self.gated else 'non-gated'}"
        text += ", transposed" if self.transposed else ""
        text += ", biases" if self.has_bias else ""
        text += ", scales on input" if self.scales_on_input else ""
        return text

    def needs_operator_extensions(self) -> bool:
        """True when the call uses operator arguments beyond plain SwiGLU (activation_type other
        than 3, clamped SwiGLU, biases, scales on the input)."""
        return (self.activation_type != SWIGLU or self.swiglu_limit is not None or self.has_bias
                or self.scales_on_input)


def _silu(x):
    return x * torch.sigmoid(x)


_GATED_ACTIVATIONS = (  # activation of the gate rows, times the up rows
    (SWIGLU, _silu), (GEGLU, F.gelu), (GEGLU_TANH, functools.partial(F.gelu, approximate="tanh")))
_NON_GATED_ACTIVATIONS = (
    (SILU, _silu), (GELU, F.gelu), (RELU, F.relu), (RELU2, lambda x: F.relu(x).square()))


def _split_gate_up(gate_up_out: torch.Tensor, order: str) -> Tuple[torch.Tensor, torch.Tensor]:
    half = gate_up_out.shape[-1] // 2
    if order == "gate_up":
        return gate_up_out[..., :half], gate_up_out[..., half:]
    if order == "up_gate":
        return gate_up_out[..., half:], gate_up_out[..., :half]
    return gate_up_out[..., ::2], gate_up_out[..., 1::2]


def _gated_candidates(module):
    """(order, activation_type, alpha, beta, limit, function) for every gating fusedmoe computes,
    plain activations first; the clamped SwiGLU takes its constants from the module's attributes."""
    numbers = lambda names: [float(v) for v in (getattr(module, n, None) for n in names)  # noqa: E731
                             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    limits = numbers(("limit", "swiglu_limit"))
    alphas = sorted(set([1.0] + numbers(("alpha", "swiglu_alpha"))))
    for order in ("gate_up", "interleaved", "up_gate"):
        for activation_type, act in _GATED_ACTIVATIONS:
            yield order, activation_type, None, None, None, (
                lambda x, o=order, a=act: (lambda g, u: a(g) * u)(*_split_gate_up(x, o)))
        for limit in sorted(set(limits)):
            for alpha in alphas:
                for beta in (0.0, 1.0):
                    def clamped(x, o=order, al=alpha, be=beta, li=limit):
                        gate, up = _split_gate_up(x, o)
                        gate, up = gate.clamp(max=li), up.clamp(min=-li, max=li)
                        return gate * torch.sigmoid(al * gate) * (up + be)
                    yield order, SWIGLU, alpha, beta, limit, clamped


def _probe_input(width: int, scale: float, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    probe = torch.randn(32, width, generator=generator) * scale
    probe[0, :] = torch.linspace(-3 * scale, 3 * scale, width)  # both tails, past any clamp limit
    return probe.to(device)


def _same(got, want) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == want.shape
            and torch.allclose(got.float(), want, rtol=2e-5, atol=2e-5))


def _identify_gating(module, intermediate_size: int, device):
    """(order, activation_type, alpha, beta, limit) whose math equals ``module._apply_gate``."""
    candidates = list(_gated_candidates(module))
    scale = max([3.0] + [1.5 * c[4] for c in candidates if c[4] is not None])
    probe = _probe_input(2 * intermediate_size, scale, device)
    try:
        with torch.no_grad():
            got = module._apply_gate(probe)
    except Exception as error:  # e.g. a gating module with bf16 parameters of its own
        raise UnsupportedExperts(
            f"{type(module).__name__}: its _apply_gate failed on an fp32 probe ({error}); fusedmoe "
            "computes only SwiGLU, GeGLU and GPT-OSS's clamped SwiGLU"
        ) from error
    for order, activation_type, alpha, beta, limit, function in candidates:
        if _same(got, function(probe)):
            return order, activation_type, alpha, beta, limit
    raise UnsupportedExperts(
        f"{type(module).__name__}: its gating (_apply_gate) is none of the activations fusedmoe "
        "computes (SwiGLU, GeGLU erf/tanh, clamped SwiGLU with the module's alpha/limit, gate and "
        "up rows concatenated either way or interleaved)"
    )


def _identify_activation(module, act_fn, candidates, device) -> int:
    probe = _probe_input(64, 3.0, device)
    try:
        with torch.no_grad():
            got = act_fn(probe)
    except Exception as error:
        raise UnsupportedExperts(
            f"{type(module).__name__}: its act_fn failed on an fp32 probe ({error})") from error
    for activation_type, function in candidates:
        if _same(got, function(probe)):
            return activation_type
    names = ", ".join(_ACTIVATION_NAMES[a] for a, _ in candidates)
    raise UnsupportedExperts(
        f"{type(module).__name__}: its activation {act_fn!r} is none of fusedmoe's ({names})"
    )


def _weight_names(module) -> Tuple[str, Optional[str], str, Optional[str]]:
    """(gemm1, gemm1 bias, gemm2, gemm2 bias) attribute names of a registry experts module."""
    gated = getattr(module, "has_gate", True)
    has_bias = getattr(module, "has_bias", False)
    gemm1 = "gate_up_proj" if gated else "up_proj"
    return gemm1, gemm1 + "_bias" if has_bias else None, "down_proj", "down_proj_bias" if has_bias else None


def experts_spec(module) -> ExpertsSpec:
    """What a registry experts module computes, in fusedmoe's terms.

    Raises:
        UnsupportedExperts (a NotImplementedError) naming the module class and the reason.
    """
    name = type(module).__name__
    if _is_llama4_experts(module):
        gemm1 = module.gate_up_proj
        activation_type = _identify_activation(module, module.act_fn, _GATED_ACTIVATIONS, gemm1.device)
        return ExpertsSpec(True, "gate_up", True, activation_type, False, scales_on_input=True)
    if getattr(module, "has_post_expert_norm", False):
        raise UnsupportedExperts(
            f"{name}: a norm after each expert (has_post_expert_norm) is not part of fusedmoe")
    gemm1_name, bias1_name, gemm2_name, bias2_name = _weight_names(module)
    for attribute in (gemm1_name, bias1_name, gemm2_name, bias2_name):
        if attribute is not None and not isinstance(getattr(module, attribute, None), torch.Tensor):
            raise UnsupportedExperts(f"{name}: expected a tensor attribute {attribute}, found none")
    gated = getattr(module, "has_gate", True)
    transposed = bool(getattr(module, "is_transposed", False))
    gemm1 = getattr(module, gemm1_name)
    try:
        _, intermediate_size, _ = _layouts.gemm1_dims(gemm1, transposed, gated)
    except ValueError as error:
        raise UnsupportedExperts(f"{name}: {error}") from error
    if gated:
        order, activation_type, alpha, beta, limit = _identify_gating(module, intermediate_size, gemm1.device)
        return ExpertsSpec(True, order, transposed, activation_type, bias1_name is not None,
                           alpha, beta, limit)
    activation_type = _identify_activation(module, module.act_fn, _NON_GATED_ACTIVATIONS, gemm1.device)
    return ExpertsSpec(False, "up_gate", transposed, activation_type, bias1_name is not None)


# ---- converted weights, cached on the module ----------------------------------------------------
@dataclasses.dataclass
class _State:
    """fusedmoe's view of one experts module: the spec, canonical weights and per-expert constants."""

    spec: ExpertsSpec
    sizes: Tuple[int, int, int]  # (E, I, H)
    in_place: bool  # the module's own parameters hold the canonical layout (convert_in_place)
    gemm1: Optional[torch.Tensor] = None  # cached canonical copies (None when in place)
    gemm2: Optional[torch.Tensor] = None
    gemm1_bias: Optional[torch.Tensor] = None
    gemm2_bias: Optional[torch.Tensor] = None
    swiglu_constants: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # fp32 [E] each
    source_key: tuple = ()  # identity, address and version of the weights converted


_STATE = "_fusedmoe_state"


def _is_llama4_experts(module) -> bool:
    return type(module).__name__ == "Llama4TextExperts"


def _source_names(module, spec: ExpertsSpec):
    if _is_llama4_experts(module):
        return "gate_up_proj", None, "down_proj", None
    return _weight_names(module)


def _sources(module, spec):
    return tuple(None if n is None else getattr(module, n) for n in _source_names(module, spec))


def _version_of(tensor: torch.Tensor) -> int:
    """The tensor's in-place write counter; -1 for inference tensors, which have none (weights
    moved or loaded under torch.inference_mode(): their in-place writes go unseen, as .data's)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def _source_key(tensors) -> tuple:
    return tuple(
        None if t is None
        else (weakref.ref(t), t.data_ptr(), _version_of(t), tuple(t.shape), t.device, t.dtype)
        for t in tensors
    )


def _key_matches(key, tensors) -> bool:
    if len(key) != len(tensors):
        return False
    for entry, tensor in zip(key, tensors):
        if entry is None or tensor is None:
            if entry is not tensor:
                return False
            continue
        ref, address, version, shape, device, dtype = entry
        if (ref() is not tensor or tensor.data_ptr() != address or _version_of(tensor) != version
                or tuple(tensor.shape) != shape or tensor.device != device or tensor.dtype != dtype):
            return False
    return True


def _check_sizes(module, sizes, top_k: Optional[int] = None) -> None:
    num_experts, intermediate_size, hidden_size = sizes
    name = type(module).__name__
    if hidden_size % _checks.SIZE_MULTIPLE or intermediate_size % _checks.SIZE_MULTIPLE:
        raise UnsupportedExperts(
            f"{name}: fusedmoe needs hidden and intermediate sizes that are multiples of "
            f"{_checks.SIZE_MULTIPLE}, got H={hidden_size}, I={intermediate_size}"
        )
    if num_experts > _checks.MAX_NUM_EXPERTS:
        raise UnsupportedExperts(
            f"{name}: fusedmoe takes at most {_checks.MAX_NUM_EXPERTS} experts, got {num_experts}")
    if top_k is not None and top_k > _checks.MAX_TOP_K:
        raise UnsupportedExperts(f"{name}: fusedmoe takes top_k <= {_checks.MAX_TOP_K}, got {top_k}")


def _check_device(device: torch.device) -> None:
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability != (9, 0):
            raise RuntimeError(
                f"experts_implementation='fusedmoe' runs on Hopper GPUs (sm_90) and CPUs; {device} is "
                f"sm_{capability[0]}{capability[1]}: use experts_implementation='grouped_mm'"
            )


def _swiglu_constants(spec: ExpertsSpec, num_experts: int, device):
    if spec.swiglu_limit is None:
        return None
    return tuple(torch.full((num_experts,), float(value), dtype=torch.float32, device=device)
                 for value in (spec.swiglu_alpha, spec.swiglu_beta, spec.swiglu_limit))


def _mark_static(*tensors) -> None:
    """CUDA tensors read by compiled code through a module attribute: static addresses, so that
    CUDA-graph trees (torch.compile mode="reduce-overhead") neither copy them each replay nor keep
    replaying a stale address (guard=True: a re-converted copy recompiles). transformers'
    StaticCache marks its tensors the same way."""
    mark = getattr(torch._dynamo, "mark_static_address", None)
    for tensor in tensors:
        if mark is not None and tensor is not None and tensor.device.type == "cuda":
            mark(tensor, guard=True)


def _convert(module) -> _State:
    """Builds the module's state: identifies its math and converts a copy of its weights."""
    spec = experts_spec(module)
    gemm1, bias1, gemm2, bias2 = _sources(module, spec)
    sizes = _layouts.gemm1_dims(gemm1, spec.transposed, spec.gated)
    _check_sizes(module, sizes)  # before copying anything
    _check_device(gemm1.device)
    # A converted tensor that still aliases its source (already canonical) is copied: the cache
    # must not change when the parameter is later modified in place.
    def own(converted, source):
        return converted.clone() if converted.data_ptr() == source.data_ptr() else converted

    with torch.no_grad():
        gemm1_c, gemm2_c = fusedmoe.prepare_weights(
            gemm1.detach(), gemm2.detach(), gate_up=spec.gate_up, transposed=spec.transposed, gated=spec.gated
        )
        gemm1_c, gemm2_c = own(gemm1_c, gemm1), own(gemm2_c, gemm2)
        bias1_c = None if bias1 is None else own(fusedmoe.prepare_gemm1_bias(
            bias1.detach(), gate_up=spec.gate_up, gated=spec.gated), bias1)
        bias2_c = None if bias2 is None else own(bias2.detach().contiguous(), bias2)
    constants = _swiglu_constants(spec, sizes[0], gemm1_c.device)
    _mark_static(gemm1_c, gemm2_c, bias1_c, bias2_c, *(constants or ()))
    return _State(spec, sizes, False, gemm1_c, gemm2_c, bias1_c, bias2_c, constants,
                  _source_key((gemm1, bias1, gemm2, bias2)))


def _current_state(module) -> _State:
    """The module's state, (re)built when missing or stale. Eager only."""
    state = getattr(module, _STATE, None)
    if state is None:
        state = _convert(module)
    elif not state.in_place and not _key_matches(state.source_key, _sources(module, state.spec)):
        setattr(module, _STATE, None)  # free the stale copy before converting again
        state = _convert(module)
    setattr(module, _STATE, state)
    return state


def _operands(module, state: _State):
    """(gemm1, gemm2, gemm1_bias, gemm2_bias) to pass to the operator."""
    if not state.in_place:
        return state.gemm1, state.gemm2, state.gemm1_bias, state.gemm2_bias
    gemm1, bias1, gemm2, bias2 = _sources(module, state.spec)
    constants = state.swiglu_constants
    if constants is not None and constants[0].device != gemm1.device and not torch.compiler.is_compiling():
        state.swiglu_constants = _swiglu_constants(state.spec, state.sizes[0], gemm1.device)  # moved by .to()
    return gemm1.detach(), gemm2.detach(), None if bias1 is None else bias1.detach(), (
        None if bias2 is None else bias2.detach())


# ---- the experts forward ------------------------------------------------------------------------
_WARNED = set()


def _fallback_reason(module, hidden_states: torch.Tensor, top_k_weights, weights) -> Optional[str]:
    """Why this call cannot run in fusedmoe (None when it can)."""
    if hidden_states.device.type not in ("cpu", "cuda"):
        return f"device {hidden_states.device.type} (fusedmoe runs on CUDA and CPU tensors)"
    dtypes = {hidden_states.dtype} | {w.dtype for w in weights if w is not None and w.dim() == 3}
    if dtypes != {torch.bfloat16}:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        return (f"dtype {names} (fusedmoe computes in bfloat16 and does not downcast a model behind "
                "your back: load it with dtype=torch.bfloat16)")
    if torch.is_grad_enabled() and (
        hidden_states.requires_grad
        or (top_k_weights is not None and top_k_weights.requires_grad)
        or any(w is not None and w.requires_grad for w in weights)
    ):
        return ("autograd (grad mode is on and a weight or input requires grad; fusedmoe has no "
                "backward: run inference under torch.no_grad() or torch.inference_mode())")
    return None


def _warn_once(module, reason: str, fallback: str = "'grouped_mm'", stacklevel: int = 4) -> None:
    key = (type(module).__name__, reason)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"experts_implementation='fusedmoe': {type(module).__name__} falls back to {fallback} "
            f"for {reason}", RuntimeWarning, stacklevel=stacklevel,
        )


def _grouped_mm_forward() -> Callable:
    from transformers.integrations import moe

    return moe.ALL_EXPERTS_FUNCTIONS["grouped_mm"]


def _prepared(module, attribute: str, build):
    """The state kept under ``attribute`` to compute with: (re)built by ``build(module)`` eagerly;
    read as is inside torch.compile, where ``prepare(model)`` or one eager forward must have made
    it."""
    if not torch.compiler.is_compiling():
        return build(module)
    state = getattr(module, attribute, None)
    if state is None:
        raise RuntimeError(_NOT_PREPARED.format(name=type(module).__name__))
    return state


def _prepared_state(module) -> _State:
    """The bf16 experts' state to compute with (``_prepared``)."""
    return _prepared(module, _STATE, _current_state)


_NOT_PREPARED = (
    "experts_implementation='fusedmoe': {name} has no converted weights inside torch.compile; "
    "run one eager forward or call fusedmoe.integrations.transformers.prepare(model) before "
    "compiling"
)


def _flat_call(hidden_states, top_k_index, top_k_weights, hidden_size):
    """(x [T, H], ids int32 [T, K], weights [T, K] bf16 or fp32) of an experts forward's inputs."""
    x = hidden_states.reshape(-1, hidden_size).contiguous()
    ids = top_k_index.reshape(x.shape[0], top_k_index.shape[-1]).to(torch.int32).contiguous()
    weights = top_k_weights.reshape(ids.shape)
    if weights.dtype not in (torch.bfloat16, torch.float32):
        weights = weights.float()  # fp16 and fp64 routing weights: fp32 keeps them (nearly) exact
    return x, ids, weights.contiguous()


def _activation_options(spec: ExpertsSpec, swiglu_constants) -> dict:
    """The operator's keyword arguments for the spec's activation (nothing for plain SwiGLU)."""
    options = {}
    if spec.activation_type != SWIGLU:
        options["activation_type"] = spec.activation_type
    if swiglu_constants is not None:
        options["gemm1_alpha"], options["gemm1_beta"], options["gemm1_clamp_limit"] = swiglu_constants
    return options


def _run(module, state: _State, hidden_states, top_k_index, top_k_weights) -> torch.Tensor:
    """The routed operator on [T, H] hidden states and the model's own routing."""
    gemm1, gemm2, bias1, bias2 = _operands(module, state)
    num_experts, intermediate_size, hidden_size = state.sizes
    spec = state.spec
    shape = hidden_states.shape
    x, ids, weights = _flat_call(hidden_states, top_k_index, top_k_weights, hidden_size)
    top_k = ids.shape[1]
    if top_k > _checks.MAX_TOP_K:
        raise UnsupportedExperts(
            f"{type(module).__name__}: fusedmoe takes top_k <= {_checks.MAX_TOP_K}, got {top_k}")
    extras = _activation_options(spec, state.swiglu_constants)
    if bias1 is not None:
        extras["gemm1_bias"] = bias1
    if bias2 is not None:
        extras["gemm2_bias"] = bias2
    if spec.scales_on_input:
        extras["use_routing_scales_on_input"] = True
    out = fusedmoe.trtllm_bf16_routed_moe(
        (ids, weights), x, gemm1, gemm2, num_experts, top_k, None, None, intermediate_size, 0,
        num_experts, **extras,
    )
    return out.reshape(shape)


def fusedmoe_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                             top_k_weights: torch.Tensor) -> torch.Tensor:
    """The registry entry "fusedmoe": an experts module's forward computed by fusedmoe.

    ``hidden_states`` [T, H], ``top_k_index`` [T, K] (ids outside [0, E) contribute nothing: the
    expert-parallel sentinels), ``top_k_weights`` [T, K] used as given (bf16 or fp32 kept).
    Returns [T, H] in the dtype of ``hidden_states``. See the module docstring for what falls back
    and what raises.
    """
    if _falls_back(self, hidden_states, top_k_weights, "'grouped_mm'"):
        return _grouped_mm_forward()(self, hidden_states, top_k_index, top_k_weights)
    state = _prepared_state(self)
    return _run(self, state, hidden_states, top_k_index, top_k_weights)


def _falls_back(module, hidden_states, top_k_weights, fallback: str) -> bool:
    """True when this call must run `fallback` instead of fusedmoe (warned once per class and
    reason); raises when the module was converted in place and so cannot fall back."""
    state = getattr(module, _STATE, None)
    reason = _fallback_reason(module, hidden_states, top_k_weights, _sources_for_checks(module, state))
    if reason is None:
        return False
    if state is not None and state.in_place:
        raise RuntimeError(
            f"experts_implementation='fusedmoe': {type(module).__name__} was converted in place "
            f"(convert_in_place) and cannot fall back to another implementation for {reason}; "
            "call fusedmoe.integrations.transformers.restore_layout(model) first"
        )
    if not torch.compiler.is_compiling():
        _warn_once(module, reason, fallback, stacklevel=5)  # one frame deeper than the forwards
    return True


def _sources_for_checks(module, state):
    if state is not None:
        return _sources(module, state.spec)
    if _is_llama4_experts(module):
        return module.gate_up_proj, None, module.down_proj, None
    return tuple(getattr(module, n, None) if n else None for n in _weight_names(module))


# ---- FP8 experts (FineGrainedFP8 checkpoints: DeepSeek-V3/R1, Qwen3-FP8, ...) ---------------------
@dataclasses.dataclass
class _Fp8State:
    """fusedmoe's view of one FP8Experts module: its spec and the converted e4m3 weights and block
    scales (docs/fp8.md), with the identity of the tensors they came from."""

    spec: ExpertsSpec
    sizes: Tuple[int, int, int]  # (E, I, H)
    operands: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # w1, s1, w2, s2
    swiglu_constants: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    source_key: tuple


_FP8_STATE = "_fusedmoe_fp8_state"


def _fp8_sources(module):
    gemm1 = "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"
    names = (gemm1, gemm1 + "_scale_inv", "down_proj", "down_proj_scale_inv")
    return tuple(getattr(module, n, None) for n in names)


def _is_fp8_experts(module) -> bool:
    """An experts module of transformers' FP8 experts registry (``FP8Experts`` of FineGrainedFP8
    checkpoints): gemm1 with a ``*_scale_inv`` tensor beside it, dispatched by its config."""
    gemm1 = "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"
    return (isinstance(getattr(module, gemm1 + "_scale_inv", None), torch.Tensor)
            and hasattr(getattr(module, "config", None), "_experts_implementation")
            and hasattr(type(module).forward, "__wrapped__"))


def _fp8_fallback_reason(module, hidden_states, top_k_weights) -> Optional[str]:
    """Why this FP8Experts call cannot run in fusedmoe (None when it can)."""
    if hidden_states.device.type not in ("cpu", "cuda"):
        return f"device {hidden_states.device.type}"
    if hidden_states.dtype != torch.bfloat16:
        return f"dtype {str(hidden_states.dtype).replace('torch.', '')} (fusedmoe computes in bfloat16)"
    reason = _fp8_module_fallback_reason(module)
    if reason is not None:
        return reason
    if torch.is_grad_enabled() and (hidden_states.requires_grad or
                                    (top_k_weights is not None and top_k_weights.requires_grad)):
        return "autograd (fusedmoe has no backward)"
    return None


def _fp8_module_fallback_reason(module) -> Optional[str]:
    """Why no call of this FP8Experts module can run in fusedmoe, whatever its input (None when
    its weights, scales and options are ones fusedmoe's FP8 variant takes)."""
    gemm1, scale1, gemm2, scale2 = _fp8_sources(module)
    if getattr(module, "activation_scheme", "dynamic") != "dynamic":
        return "static activation scales (fusedmoe quantises activations per token and 128-group)"
    block = getattr(module, "block_size", None)
    if block is None or tuple(block) != (128, 128):
        return f"block size {block} (fusedmoe's FP8 blocks are 128 x 128)"
    if any(t is None for t in (gemm1, scale1, gemm2, scale2)):
        return "missing weights or scales"
    if any(w.dtype != torch.float8_e4m3fn for w in (gemm1, gemm2)) or any(
            s.dtype != torch.float32 for s in (scale1, scale2)):
        names = lambda *ts: " and ".join(str(t.dtype).replace("torch.", "") for t in ts)  # noqa: E731
        return (f"weights {names(gemm1, gemm2)} with scales {names(scale1, scale2)} (fusedmoe "
                "takes float8_e4m3fn weights with float32 scales)")
    if getattr(module, "has_bias", False):
        return "expert biases"
    return None


def _fp8_state(module) -> _Fp8State:
    """The module's FP8 state, (re)built when missing or stale (the same staleness rules as the
    bf16 cache: identity, address, version, shape, device and dtype of the source tensors)."""
    sources = _fp8_sources(module)
    state = getattr(module, _FP8_STATE, None)
    if state is not None and _key_matches(state.source_key, sources):
        return state
    setattr(module, _FP8_STATE, None)
    spec = experts_spec(module)
    gemm1, scale1, gemm2, scale2 = sources
    sizes = _layouts.gemm1_dims(gemm1, False, spec.gated)
    _check_sizes(module, sizes)
    _check_device(gemm1.device)
    with torch.no_grad():
        operands = fusedmoe.fp8.prepare_fp8_weights(
            gemm1.detach(), scale1.detach(), gemm2.detach(), scale2.detach(), gate_up=spec.gate_up,
            gated=spec.gated)
        # Own copies: the cache must not change when a parameter is later modified in place.
        operands = tuple(c.clone() if c.data_ptr() == src.data_ptr() else c
                         for c, src in zip(operands, sources))
    constants = _swiglu_constants(spec, sizes[0], gemm1.device)
    _mark_static(*operands, *(constants or ()))
    state = _Fp8State(spec, sizes, operands, constants, _source_key(sources))
    setattr(module, _FP8_STATE, state)
    return state


def _prepared_fp8_state(module) -> _Fp8State:
    """The FP8 experts' state to compute with (``_prepared``)."""
    return _prepared(module, _FP8_STATE, _fp8_state)


def fusedmoe_fp8_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                                 top_k_weights: torch.Tensor) -> torch.Tensor:
    """The FP8 registry entry "fusedmoe": an ``FP8Experts`` module's forward computed by fusedmoe's
    FP8 block-scale variant (its 128 x 128 e4m3 weights and fp32 scales as they are, activations
    quantised per token and 128-group, as the checkpoint's recipe does).

    Falls back, with one warning per module class and reason, to transformers' own FP8
    ``"grouped_mm"`` experts for what fusedmoe's FP8 variant does not take (static activation
    scales, other block sizes or scale formats, biases, autograd);
    raises ``UnsupportedExperts`` for a gating fusedmoe does not compute. Inside ``torch.compile``
    the converted weights must exist already (``prepare(model)`` or one eager forward), else a
    ``RuntimeError`` says so.
    """
    reason = _fp8_fallback_reason(self, hidden_states, top_k_weights)
    if reason is not None:
        if not torch.compiler.is_compiling():
            _warn_once(self, reason, fallback="transformers' FP8 'grouped_mm'")
        from transformers.integrations import finegrained_fp8  # noqa: PLC0415

        return finegrained_fp8.ALL_FP8_EXPERTS_FUNCTIONS["grouped_mm"](
            self, hidden_states, top_k_index, top_k_weights)
    state = _prepared_fp8_state(self)
    num_experts, intermediate_size, hidden_size = state.sizes
    x, ids, weights = _flat_call(hidden_states, top_k_index, top_k_weights, hidden_size)
    w1, s1, w2, s2 = state.operands
    out = fusedmoe.trtllm_fp8_block_scale_routed_moe(
        (ids, weights), None, x, None, w1, s1, w2, s2, num_experts, ids.shape[1], None, None,
        intermediate_size, 0, num_experts, None,
        **_activation_options(state.spec, state.swiglu_constants),
    )
    return out.reshape(hidden_states.shape)


# ---- Llama 4: experts outside the registry --------------------------------------------------------
def _patch_llama4() -> None:
    """Teaches Llama4TextMoe the experts_implementation switch (its experts module takes inputs
    already scaled by the routing weights, over every expert, and bypasses the registry)."""
    try:
        from transformers.models.llama4 import modeling_llama4
    except ImportError:
        return
    moe_class = getattr(modeling_llama4, "Llama4TextMoe", None)
    if moe_class is None or getattr(moe_class, "_fusedmoe_patched", False):
        return
    original_init, original_forward = moe_class.__init__, moe_class.forward

    @functools.wraps(original_init)
    def __init__(self, config, *args, **kwargs):
        original_init(self, config, *args, **kwargs)
        self._fusedmoe_config = config

    @functools.wraps(original_forward)
    def forward(self, hidden_states):
        if _llama4_selected(self):
            return _llama4_forward(self, hidden_states, original_forward)
        return original_forward(self, hidden_states)

    moe_class.__init__ = __init__
    moe_class.forward = forward
    moe_class._fusedmoe_patched = True


def _llama4_selected(moe_module) -> bool:
    config = getattr(moe_module, "_fusedmoe_config", None)
    return config is not None and getattr(config, "_experts_implementation", None) == NAME


def _llama4_forward(self, hidden_states, original_forward):
    """Llama4TextMoe.forward with the routed experts in fusedmoe: the router and the shared expert
    stay the model's; expert e computes on bf16(score * x) and its output is not weighted again."""
    experts = self.experts
    flat = hidden_states.reshape(-1, self.hidden_dim)
    if _falls_back(experts, flat, None, "its own forward"):
        return original_forward(self, hidden_states)
    if self.top_k != 1:
        raise UnsupportedExperts(
            f"Llama4TextMoe: fusedmoe applies routing scales to the expert input only with top_k == 1, "
            f"got num_experts_per_tok={self.top_k}"
        )
    state = _prepared_state(experts)
    router_scores, router_logits = self.router(flat)
    # The experts the router's scores select (sigmoid of the chosen logits; -inf -> 0 elsewhere),
    # exactly the ones the model's own forward weights: a top-k of the logits could pick another
    # expert at a tie of the logits that the scores already settled.
    ids = torch.topk(router_scores, self.top_k, dim=1).indices
    weights = router_scores.gather(1, ids)
    routed = _run(experts, state, flat, ids, weights)
    out = self.shared_expert(flat)
    out.add_(routed)
    return out, router_logits


# ---- whole-model helpers ------------------------------------------------------------------------
def _is_registry_experts(module) -> bool:
    return (hasattr(module, "is_transposed") and hasattr(module, "has_bias")
            and hasattr(getattr(module, "config", None), "_experts_implementation")
            and hasattr(type(module).forward, "__wrapped__"))


def fusedmoe_experts_modules(model: torch.nn.Module):
    """The experts modules of ``model`` that compute with fusedmoe (their config selects it)."""
    found = []
    for module in model.modules():
        if type(module).__name__ == "Llama4TextMoe" and _llama4_selected(module):
            found.append(module.experts)
        elif _is_registry_experts(module) and module.config._experts_implementation == NAME:
            found.append(module)
    return found


def prepare(model: torch.nn.Module, *, refresh: bool = False) -> int:
    """Converts the weights of every fusedmoe experts module of ``model`` now (else: at its first
    forward), FP8 experts (``FP8Experts``) included. Call it before ``torch.compile`` or
    CUDA-graph capture, to fail early on an unsupported module, or with ``refresh=True`` after
    changing weights through ``param.data`` (which drops every cached copy in ``model``, bf16 and
    FP8, selected now or not). Modules whose forward falls back whatever the input (bf16 experts
    whose weights are not bf16; FP8 experts with static activation scales, other block sizes or
    scale dtypes, biases) are skipped. Returns the number of modules prepared."""
    if refresh:  # every cached copy, also of modules switched to another implementation for now
        for module in model.modules():
            state = getattr(module, _STATE, None)
            if state is not None and not state.in_place:
                setattr(module, _STATE, None)
            if getattr(module, _FP8_STATE, None) is not None:
                setattr(module, _FP8_STATE, None)
    count = 0
    for module in fusedmoe_experts_modules(model):
        if _is_fp8_experts(module):  # transformers' FP8 experts registry: fusedmoe's FP8 variant
            if _fp8_module_fallback_reason(module) is None:
                _fp8_state(module)
                count += 1
            continue
        state = getattr(module, _STATE, None)
        if state is not None and state.in_place:
            count += 1
            continue
        if any(w is not None and w.dtype != torch.bfloat16 for w in _sources_for_checks(module, None)):
            continue
        _current_state(module)
        count += 1
    return count


def _rewrite_per_expert(param: torch.Tensor, convert, new_shape) -> None:
    """Rewrites a contiguous [E, ...] parameter expert by expert into ``new_shape`` (same number of
    elements per expert), in its own storage: one expert's worth of extra memory."""
    data = param.data
    if not data.is_contiguous():
        raise ValueError(
            f"convert_in_place: expected contiguous expert weights, got strides {tuple(data.stride())}")
    flat = data.view(data.shape[0], -1)
    for expert in range(data.shape[0]):
        flat[expert].copy_(convert(data[expert].unsqueeze(0)).reshape(-1))
    param.data = flat.view(new_shape)


def _in_place_plan(module):
    """(spec, parameter names, sizes) of a module ``convert_in_place`` may rewrite; raises, before
    anything is written, for weights it cannot rewrite (dtype, layout, sizes, device)."""
    spec = experts_spec(module)
    names = _source_names(module, spec)
    gemm1_name, _, gemm2_name, _ = names
    gemm1, gemm2 = getattr(module, gemm1_name), getattr(module, gemm2_name)
    for name, tensor in ((gemm1_name, gemm1), (gemm2_name, gemm2)):
        if tensor.dtype != torch.bfloat16:
            raise TypeError(
                f"convert_in_place: {type(module).__name__}.{name} is {tensor.dtype}, expected bfloat16")
        if not tensor.data.is_contiguous():
            raise ValueError(
                f"convert_in_place: {type(module).__name__}.{name} is not contiguous (strides "
                f"{tuple(tensor.stride())}), expected contiguous expert weights")
        if tensor.device != gemm1.device:
            raise ValueError(
                f"convert_in_place: {type(module).__name__}.{name} is on {tensor.device}, "
                f"expected {gemm1.device} (that of {gemm1_name})")
    sizes = _layouts.gemm1_dims(gemm1, spec.transposed, spec.gated)
    num_experts, intermediate_size, hidden_size = sizes
    gemm2_shape = ((num_experts, intermediate_size, hidden_size) if spec.transposed
                   else (num_experts, hidden_size, intermediate_size))
    if tuple(gemm2.shape) != gemm2_shape:
        raise ValueError(
            f"convert_in_place: {type(module).__name__}.{gemm2_name} has shape {tuple(gemm2.shape)}, "
            f"expected {gemm2_shape} (from {gemm1_name} {tuple(gemm1.shape)})")
    _check_sizes(module, sizes)
    _check_device(gemm1.device)
    return spec, names, sizes


def convert_in_place(model: torch.nn.Module) -> int:
    """Rewrites the parameters of every fusedmoe experts module of ``model`` into fusedmoe's layout,
    keeping ONE copy of the experts (the default cache keeps two). Returns the modules converted.

    Trade-off: afterwards those modules compute only with fusedmoe. A call that would fall back
    (autograd, a non-bf16 input) raises instead; switching ``experts_implementation`` away, saving
    the model or loading a transformers checkpoint into it reads the parameters in the wrong layout
    until ``restore_layout(model)``. The weights must be bf16 and contiguous. Every module is
    checked before any is rewritten: when one is rejected (TypeError, ValueError,
    UnsupportedExperts, RuntimeError), no parameter of ``model`` has changed.
    FP8 experts (``FP8Experts``) cannot be converted in place (a TypeError, before any rewrite).
    """
    # Every module is checked before any parameter is rewritten: a rejected call changes nothing.
    plans = []
    count = 0
    for module in fusedmoe_experts_modules(model):
        state = getattr(module, _STATE, None)
        if state is not None and state.in_place:
            count += 1
            continue
        plans.append((module, _in_place_plan(module)))
    for module, (spec, names, sizes) in plans:
        setattr(module, _STATE, None)  # drop a cached copy first
        gemm1_name, bias1_name, gemm2_name, _ = names
        gemm1, gemm2 = getattr(module, gemm1_name), getattr(module, gemm2_name)
        num_experts, intermediate_size, hidden_size = sizes
        rows = 2 * intermediate_size if spec.gated else intermediate_size
        with torch.no_grad():
            _rewrite_per_expert(
                gemm1, lambda w: _layouts.gemm1_to_canonical(w, spec.gate_up, spec.transposed, spec.gated),
                (num_experts, rows, hidden_size))
            _rewrite_per_expert(gemm2, lambda w: _layouts.gemm2_to_canonical(w, spec.transposed),
                                (num_experts, hidden_size, intermediate_size))
            if bias1_name is not None:
                bias1 = getattr(module, bias1_name)
                bias1.data = _layouts.gemm1_bias_to_canonical(bias1.data, spec.gate_up, spec.gated)
        constants = _swiglu_constants(spec, num_experts, gemm1.device)
        setattr(module, _STATE, _State(spec, sizes, True, swiglu_constants=constants))
        count += 1
    return count


def restore_layout(model: torch.nn.Module) -> int:
    """Undoes ``convert_in_place``: the parameters return to the model's own layout (bitwise) and
    the modules to the default cached conversion. Returns the modules restored."""
    count = 0
    for module in model.modules():
        state = getattr(module, _STATE, None)
        if state is None or not state.in_place:
            continue
        spec = state.spec
        num_experts, intermediate_size, hidden_size = state.sizes
        gemm1_name, bias1_name, gemm2_name, _ = _source_names(module, spec)
        rows = 2 * intermediate_size if spec.gated else intermediate_size
        gemm1_shape = ((num_experts, hidden_size, rows) if spec.transposed
                       else (num_experts, rows, hidden_size))
        gemm2_shape = (num_experts, intermediate_size, hidden_size) if spec.transposed else (
            num_experts, hidden_size, intermediate_size)
        with torch.no_grad():
            _rewrite_per_expert(
                getattr(module, gemm1_name),
                lambda w: _layouts.to_checkpoint_gemm1(w, spec.gate_up, spec.transposed, spec.gated),
                gemm1_shape)
            _rewrite_per_expert(getattr(module, gemm2_name),
                                lambda w: _layouts.to_checkpoint_gemm2(w, spec.transposed), gemm2_shape)
            if bias1_name is not None:
                bias1 = getattr(module, bias1_name)
                bias1.data = _layouts.to_checkpoint_gemm1_bias(bias1.data, spec.gate_up, spec.gated)
        setattr(module, _STATE, None)
        count += 1
    return count
