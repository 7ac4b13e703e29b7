"""experiments/profile_drafter.py: the device-op breakdown of a profiler trace, on a synthetic
XSpace (the CPU records no device plane, so the GPU trace's shape is written by hand)."""

import importlib.util
from pathlib import Path

import pytest
from jax.profiler import ProfileData

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("profile_drafter",
                                              REPO / "experiments" / "profile_drafter.py")
pd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pd)

# ops on the "XLA Ops" line (ps): a Mosaic kernel 5 us, a GEMM 2 us, two numbered fusions 1 us
# each overlapping by 0.5 us, 1 us idle before the last; a module marker spanning them all
XSPACE = '''
planes { id: 1 name: "/device:GPU:0"
  lines { id: 1 name: "XLA Modules" timestamp_ns: 0
    events { metadata_id: 9 offset_ps: 0 duration_ps: 11000000 } }
  lines { id: 2 name: "XLA Ops" timestamp_ns: 0
    events { metadata_id: 1 offset_ps: 0 duration_ps: 5000000 }
    events { metadata_id: 2 offset_ps: 5000000 duration_ps: 2000000 }
    events { metadata_id: 3 offset_ps: 7000000 duration_ps: 1000000 }
    events { metadata_id: 4 offset_ps: 7500000 duration_ps: 1000000 }
    events { metadata_id: 5 offset_ps: 9500000 duration_ps: 1500000 } }
  event_metadata { key: 1 value { id: 1 name: "custom-call.7" display_name: "mosaic_gpu" } }
  event_metadata { key: 2 value { id: 2 name: "cublas-gemm.2" } }
  event_metadata { key: 3 value { id: 3 name: "fusion.12" } }
  event_metadata { key: 4 value { id: 4 name: "fusion.13" } }
  event_metadata { key: 5 value { id: 5 name: "reduce.4" } }
  event_metadata { key: 9 value { id: 9 name: "jit_drafter_scores" } }
}
'''


def _profile(text=XSPACE):
    return ProfileData.from_serialized_xspace(ProfileData.text_proto_to_serialized_xspace(text))


def test_breakdown_of_a_synthetic_trace():
    line, ops = pd.device_ops(_profile())
    assert line == "XLA Ops" and len(ops) == 5  # the module marker line is not summed
    b = pd.breakdown(ops)
    assert b["span_ms"] == pytest.approx(11e-3)
    assert b["busy_ms"] == pytest.approx(10e-3)  # 5 + 2 + 1.5 (overlap once) + 1.5
    assert b["idle_ms"] == pytest.approx(1e-3)
    assert b["kinds"]["GEMM"] == pytest.approx(2e-3)
    assert b["kinds"]["other fusion"] == pytest.approx(2e-3)
    assert b["kinds"]["reduction"] == pytest.approx(1.5e-3)
    fusion = next(o for o in b["top_ops"] if o["op"] == "fusion")
    assert fusion["count"] == 2  # fusion.12 and fusion.13 summed
    assert "| idle (no op on the line) |" in pd.table(b, "# t")


def test_kinds_from_names_and_hlo():
    assert pd.kind_of("custom-call.3", 'custom_call_target="mosaic_gpu"').startswith("block")
    assert pd.kind_of("custom-call.3", "__gpu$xla.gpu.triton").startswith("block")
    assert pd.kind_of("cublas-gemm.1") == "GEMM"
    # the names an H200 trace shows for cuBLAS's GEMMs, our selection kernel and the top-k sort
    assert pd.kind_of("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT") == "GEMM"
    assert pd.kind_of("flashprefill_block_mass").startswith("block selection")
    assert pd.kind_of("block_sparse_attention_mgpu_mosaic_gpu_kernel").startswith("block-sparse")
    assert pd.kind_of("sort_7_1").startswith("sort")
    assert pd.kind_of("fusion.5", "%fusion.5 = bf16[] fusion(...), kind=kLoop") == "other fusion"
    assert pd.kind_of("all-reduce.1") == "collective"


def test_a_trace_without_a_device_plane_is_refused():
    with pytest.raises(ValueError, match="no device plane: profile on a GPU"):
        pd.device_ops(_profile('planes { id: 1 name: "/host:CPU" }'))


def test_rekind_rederives_top_ops_and_keeps_the_rest():
    """--rekind: the top ops take today's kinds; what a recorded kind held outside the top list
    stays under that kind, marked; no time is created or lost."""

    b = {"kinds": {"other": 30.0, "other fusion": 5.0},
         "top_ops": [{"op": "nvjet_sm90_x", "kind": "other", "ms": 20.0, "count": 2},
                     {"op": "sort_7_1", "kind": "other", "ms": 6.0, "count": 1},
                     {"op": "loop_add_fusion", "kind": "other fusion", "ms": 5.0, "count": 1}]}
    r = pd.rekind(b)
    assert r["kinds"]["GEMM"] == 20.0 and r["kinds"]["sort (block selection's top-k)"] == 6.0
    assert r["kinds"]["other (ops outside the top 3, as recorded)"] == 4.0
    assert r["kinds"]["other fusion"] == 5.0
    assert not any(k.startswith("other fusion (") for k in r["kinds"])  # nothing left there
    assert sum(r["kinds"].values()) == sum(b["kinds"].values())
