"""Lowering Pallas Triton kernels for CUDA on a machine without a GPU: every Triton module the
lowering builds is verified and its name recorded. Lowering errors show up on the CPU; PTX
compilation only on a GPU."""

import jax


def verify_triton_lowering(monkeypatch) -> tuple[list[str], jax.sharding.AbstractMesh]:
    """Patch the Triton lowering to verify each module it builds; returns the list the
    modules' names are appended to, and an abstract H100 mesh to lower under
    (`with jax.sharding.use_abstract_mesh(mesh): lower_for_cuda(f, ...)`)."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    lower = registration.lowering.lower_jaxpr_to_triton_module
    names: list[str] = []

    def lower_and_verify(*args, **kwargs):
        result = lower(*args, **kwargs)
        assert result.module.operation.verify()
        names.append(result.module.operation.attributes["sym_name"].value)
        return result

    monkeypatch.setattr(registration.lowering, "lower_jaxpr_to_triton_module", lower_and_verify)
    dev = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")
    return names, jax.sharding.AbstractMesh((1,), ("x",), abstract_device=dev)


def lower_for_cuda(f, *args) -> str:
    """The HLO text of jitted f lowered for CUDA on abstract args (inside the mesh above)."""
    return f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
