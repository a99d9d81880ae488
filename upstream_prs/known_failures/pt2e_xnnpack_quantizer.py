# ruff: noqa: E501, E741  (a research reproducer kept as it was run)
"""PT2E (XNNPACKQuantizer) -> ExecuTorch/XNNPACK export of the tiny Gemma 3n text decoder, stage by stage.

usage: python upstream_prs/known_failures/pt2e_xnnpack_quantizer.py [CONFIG ...]      (default: all configs below, each in its own subprocess)
A config is  MODE[+inplace][+scalars][+partition][+perop]  with MODE in {dyn, static}:
  inplace   (Gemma 3n code)  Gemma3nTextDecoderLayer.forward: `corrected_predictions[1:] += first_prediction`
                             -> torch.cat out-of-place equivalent (bit-identical in eager fp32, checked)
  scalars   (library)        XNNPACKQuantizer.transform_for_annotation (_convert_scalars_to_attrs) turns int64
                             `arange + 0` into int64 + float32-tensor -> float indices; fix: only convert
                             scalars of floating-point add/mul
  partition (library)        ExecuTorch GroupBasedPartitioner merges partitions that are each acyclic but
                             mutually dependent -> "Invalid partition, found dependency cycles"; fix: split
                             partitions on a partition-level cycle into connected pieces
  perop     (library config) alternative to `partition`: XnnpackPartitioner(per_op_mode=True) (slow lowering)
"""

import tempfile
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
import collections

CONFIGS = [
    "dyn",
    "dyn+inplace",
    "dyn+scalars",
    "dyn+inplace+scalars",
    "dyn+inplace+scalars+partition",
    "static+inplace+scalars+partition",
]
STAGE_TIMEOUT = int(os.environ.get("STAGE_TIMEOUT", "120"))  # convert hangs (exponential walk) without `inplace`
HERE = os.path.dirname(os.path.abspath(__file__))


class StageTimeout(Exception):
    pass


def stage(name, fn):
    def alarm(*_):
        raise StageTimeout(f"no result after {STAGE_TIMEOUT} s")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(STAGE_TIMEOUT)
    t = time.time()
    try:
        r = fn()
    except BaseException as e:
        signal.alarm(0)
        tb = traceback.extract_tb(e.__traceback__)
        where = [
            f"{os.path.relpath(f.filename, sys.prefix) if f.filename.startswith(sys.prefix) else f.filename}:{f.lineno} {f.name}"
            for f in tb[-3:]
        ]
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"[FAIL] {name}: {type(e).__name__}: {msg}\n        innermost frames: {' <- '.join(reversed(where))}",
            flush=True,
        )
        cause = e.__cause__ or e.__context__
        while cause is not None:
            ctb = traceback.extract_tb(cause.__traceback__)[-2:]
            cwhere = " <- ".join(
                f"{os.path.relpath(f.filename, sys.prefix)}:{f.lineno} {f.name}" for f in reversed(ctb)
            )
            cmsg = str(cause).splitlines()[0] if str(cause) else ""
            print(f"        caused by {type(cause).__name__}: {cmsg}\n          at {cwhere}", flush=True)
            cause = cause.__cause__ or cause.__context__
        sys.exit(1)
    signal.alarm(0)
    print(f"[OK]   {name} ({time.time() - t:.1f} s)", flush=True)
    return r


# ---------------------------------------------------------------- fix (a): Gemma 3n modelling code
def patch_decoder_inplace():
    import math
    import torch
    from transformers.models.gemma3n import modeling_gemma3n as M

    def forward(
        self,
        hidden_states,
        position_embeddings=None,
        per_layer_input=None,
        shared_kv_states=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        **kwargs,
    ):
        # transformers 5.23.0 Gemma3nTextDecoderLayer.forward, with only the last statement changed
        predictions = self.altup.predict(hidden_states)
        active_prediction = predictions[self.config.altup_active_idx]
        active_prediction_normed = self.input_layernorm(active_prediction)
        laurel_output = self.laurel(active_prediction_normed)
        attn, _ = self.self_attn(
            hidden_states=active_prediction_normed,
            attention_mask=attention_mask,
            shared_kv_states=shared_kv_states,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            past_key_values=past_key_values,
            **kwargs,
        )
        attn = self.post_attention_layernorm(attn)
        attn_gated = active_prediction + attn
        attn_laurel = (attn_gated + laurel_output) / math.sqrt(2)
        attn_norm = self.pre_feedforward_layernorm(attn_laurel)
        attn_ffw = self.mlp(attn_norm)
        attn_ffw_norm = self.post_feedforward_layernorm(attn_ffw)
        attn_ffw_laurel_gated = attn_laurel + attn_ffw_norm
        corrected_predictions = self.altup.correct(predictions, attn_ffw_laurel_gated)
        first_prediction = corrected_predictions[self.config.altup_active_idx].clone()
        if self.config.altup_correct_scale:
            first_prediction = self.altup.scale_corrected_output(first_prediction)
        first_prediction = self.per_layer_input_gate(first_prediction)
        first_prediction = self.act_fn(first_prediction)
        first_prediction = torch.multiply(first_prediction, per_layer_input)
        first_prediction = self.per_layer_projection(first_prediction)
        first_prediction = self.post_per_layer_input_norm(first_prediction)
        # upstream: corrected_predictions[1:] += first_prediction  -> slice/add_/copy_ in the exported graph
        return torch.cat([corrected_predictions[:1], corrected_predictions[1:] + first_prediction], dim=0)

    M.Gemma3nTextDecoderLayer.forward = forward


# ---------------------------------------------------------------- fix (b1): XNNPACKQuantizer scalar pass
def fixed_quantizer_class():
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import get_new_attr_name_with_prefix

    class FloatScalarsXNNPACKQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            # = _convert_scalars_to_attrs, but skipping add/mul whose result is not floating point
            for n in model.graph.nodes:
                if n.op != "call_function" or n.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor):
                    continue
                val = n.meta.get("val")
                if val is None or not val.is_floating_point():
                    continue
                new_args = []
                for a in n.args:
                    if isinstance(a, torch.fx.Node):
                        new_args.append(a)
                        continue
                    name = get_new_attr_name_with_prefix("_tensor_constant_")(model)
                    t = torch.tensor(float(a))
                    model.register_buffer(name, t)
                    with model.graph.inserting_before(n):
                        g = model.graph.create_node("get_attr", name, (), {})
                        g.meta["val"] = val.fake_mode.from_tensor(t, static_shapes=True)
                    new_args.append(g)
                n.args = tuple(new_args)
            model.recompile()
            return model

    return FloatScalarsXNNPACKQuantizer


# ---------------------------------------------------------------- fix (b2): ExecuTorch group partitioner
def patch_partitioner():
    from torch.fx.passes.infra.partitioner import Partition
    import executorch.exir.backend.canonical_partitioners.config_partitioner as CP

    def partition_cycle(gm, parts):
        owner = {n: i for i, p in enumerate(parts) for n in p.nodes}

        def key(n):
            return ("P", owner[n]) if n in owner else ("N", n)

        succ = collections.defaultdict(set)
        for n in gm.graph.nodes:
            for u in n.users:
                if key(n) != key(u):
                    succ[key(n)].add(key(u))
        color = {}
        for start in list(succ):
            if start in color:
                continue
            color[start] = 1
            stack, path = [(start, iter(succ[start]))], [start]
            while stack:
                v, it = stack[-1]
                w = next(it, None)
                if w is None:
                    color[v] = 2
                    stack.pop()
                    path.pop()
                elif color.get(w, 0) == 0:
                    color[w] = 1
                    stack.append((w, iter(succ[w])))
                    path.append(w)
                elif color[w] == 1:
                    return [x[1] for x in path[path.index(w) :] if x[0] == "P"]
        return None

    def components(nodes):
        nodes, seen, comps = set(nodes), set(), []
        for n in nodes:
            if n in seen:
                continue
            comp, stack = set(), [n]
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                comp.add(x)
                stack.extend(y for y in list(x.users) + x.all_input_nodes if y in nodes)
            comps.append(comp)
        return comps

    orig = CP.generate_grouped_partitions_from_list_of_nodes

    def generate(gm, *args, **kwargs):
        parts = list(orig(gm, *args, **kwargs))
        next_id, repaired = max((p.id for p in parts), default=0) + 1, 0
        while (cycle := partition_cycle(gm, parts)) is not None:
            victim = min(cycle, key=lambda i: len(parts[i].nodes))
            comps = components(parts[victim].nodes)
            del parts[victim]
            if len(comps) > 1:  # split an unconnected merge into its connected pieces
                for comp in comps:
                    parts.append(Partition(id=next_id, nodes=comp))
                    next_id += 1
            repaired += 1  # a connected partition on a cycle is left to the portable path
        print(f"[INFO] partition fix: {repaired} partition-level cycle(s) repaired", flush=True)
        return parts

    CP.generate_grouped_partitions_from_list_of_nodes = generate


def run_config(config):
    warnings.simplefilter("ignore")
    mode, *fixes = config.split("+")
    import torch
    import gemma3n_export_fixes as gx

    torch.set_num_threads(1)
    gx.apply()
    from gemma3n_export_fixes.models.tiny import build_tiny_model, tiny_input_ids
    from gemma3n_export_fixes.export.program import TextOnlyLogits
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
    from executorch.exir import to_edge_transform_and_lower
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    print(f"=== config {config}: torch {torch.__version__}", flush=True)

    ids = tiny_input_ids(32)
    with torch.no_grad():
        eager = TextOnlyLogits.wrap(build_tiny_model())(ids)  # upstream (in-place) code
    if "inplace" in fixes:
        patch_decoder_inplace()
        with torch.no_grad():
            again = TextOnlyLogits.wrap(build_tiny_model())(ids)
        print(f"[INFO] out-of-place decoder layer bit-identical in eager fp32: {torch.equal(eager, again)}")
    if "partition" in fixes:
        patch_partitioner()
    wrapped = TextOnlyLogits.wrap(build_tiny_model())

    def cmp(name, out):
        print(
            f"[INFO] {name} vs eager: max|diff| {(out - eager).abs().max().item():.4g}  "
            f"top-1 agreement {(out.argmax(-1) == eager.argmax(-1)).float().mean().item() * 32:.0f}/32",
            flush=True,
        )

    gm = stage(
        "export (torch.export.export, strict=False).module()",
        lambda: torch.export.export(wrapped, (ids,), strict=False).module(),
    )
    qcls = fixed_quantizer_class() if "scalars" in fixes else XNNPACKQuantizer
    quantizer = qcls().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=(mode == "dyn")))
    prepared = stage("prepare_pt2e", lambda: prepare_pt2e(gm, quantizer))

    def calibrate():
        with torch.no_grad():
            for seed in range(4):
                prepared(tiny_input_ids(32, seed=seed))

    stage("calibrate", calibrate)
    converted = stage("convert_pt2e", lambda: convert_pt2e(prepared))
    with torch.no_grad():
        cmp("converted (fake-quant reference)", converted(ids))
    ep = stage("re-export", lambda: torch.export.export(converted, (ids,), strict=False))
    partitioner = XnnpackPartitioner(per_op_mode=True) if "perop" in fixes else XnnpackPartitioner()
    global STAGE_TIMEOUT
    STAGE_TIMEOUT = max(STAGE_TIMEOUT, 500)  # lowering is legitimately slow (O(n^2) partition merge)
    edge = stage(
        "to_edge_transform_and_lower(XnnpackPartitioner)",
        lambda: to_edge_transform_and_lower(ep, partitioner=[partitioner]),
    )
    et = stage("to_executorch", edge.to_executorch)
    path = os.path.join(tempfile.gettempdir(), f"tiny_{config.replace('+', '_')}.pte")
    with open(path, "wb") as f:
        f.write(et.buffer)
    delegates = sum(
        1 for n in et.exported_program().graph.nodes if n.op == "get_attr" and "lowered_module" in str(n.target)
    )
    print(f"[INFO] wrote {path} ({len(et.buffer)} bytes, {delegates} XNNPACK delegate calls)")
    out = stage(
        "execute (executorch.runtime)",
        lambda: Runtime.get().load_program(path).load_method("forward").execute([ids])[0],
    )
    cmp(".pte", out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        run_config(sys.argv[2])
    else:
        for config in sys.argv[1:] or CONFIGS:
            proc = subprocess.run([sys.executable, "-u", __file__, "--one", config], capture_output=True, text=True)
            lines = [
                l
                for l in (proc.stdout + proc.stderr).splitlines()
                if l.startswith(("===", "[OK]", "[FAIL]", "[INFO]", "        "))
            ]
            print("\n".join(lines) or proc.stderr[-2000:], flush=True)
