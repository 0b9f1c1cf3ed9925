"""Splits a failure of test_gpu_torch_compile_inductor (docs/reliability.md, "A seed of the
compiled transformers test") into its parts for one seed, on the GPU: the tiny model's
logits against its fp32 copy (max |difference|) for fusedmoe eagerly, fusedmoe compiled by
inductor (the test), and the model's own experts compiled by inductor (no fusedmoe at all; not
fullgraph, their loop over experts breaks the graph); and two more to split it further: fusedmoe
under aot_eager (the graph without inductor's code generation) and transformers' grouped_mm experts
under inductor, fullgraph (the same compiled router and attention with another experts kernel). If
those compiled without fusedmoe are as far off as the test, the compiled router chose other experts
and fusedmoe is not at fault; and fusedmoe under inductor with
emulate_precision_casts (its intermediates rounded as eager rounds them).
Usage (device): PYTHONPATH=<site with fusedmoe> python3 dev/hf_seed_check.py [SEED] [FAMILY]
"""
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from fusedmoe.integrations import transformers as fusedmoe_hf  # noqa: E402
from hf_cases import VOCAB, max_abs, set_implementation, tiny_model  # noqa: E402


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 2149364026
    family = sys.argv[2] if len(sys.argv) > 2 else "qwen3_moe"
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: to try the script
    results = {}
    labels = ("fusedmoe eager", "fusedmoe inductor", "own experts inductor", "fusedmoe aot_eager",
              "grouped_mm inductor", "fusedmoe inductor, eager's casts")
    for label in labels:
        torch._dynamo.reset()
        generator = torch.Generator().manual_seed(seed)
        implementation = ("eager" if label.startswith("own") else
                          "grouped_mm" if label.startswith("grouped_mm") else "fusedmoe")
        model = tiny_model(family, generator, implementation, device=device)
        reference = copy.deepcopy(model).float()
        set_implementation(reference, "eager")
        tokens = torch.randint(3, VOCAB, (2, 9), generator=generator).to(device)
        with torch.no_grad():
            if label.startswith("fusedmoe"):
                fusedmoe_hf.prepare(model)
            if label.endswith(" eager"):
                ours = model(tokens).logits
            else:
                backend = label.split(",")[0].split()[-1]
                # inductor rounds its intermediates to bf16 where eager does: same routing?
                torch._inductor.config.emulate_precision_casts = label.endswith("casts")
                ours = torch.compile(model, backend=backend,
                                     fullgraph=not label.startswith("own"))(tokens).logits
            ref = reference(tokens).logits
        results[label] = max_abs(ours, ref)
        if label == "fusedmoe eager":
            set_implementation(model, "eager")
            with torch.no_grad():
                results["bf16 eager (the allowance's base)"] = max_abs(model(tokens).logits, ref)
    for label, err in results.items():
        print(f"{family} seed {seed} ({device}): {label:<34} max |logits - fp32| = {err:.4g}")


if __name__ == "__main__":
    main()
