"""Priors as files: safetensors tensors plus a JSON metadata block, never pickle.

File layout: one ``.safetensors`` file. Tensors are named ``generator.<param>`` and
``discriminator.<param>``, ``segmenter.<param>`` when the prior carries a learned anomaly segmenter
(:mod:`rgi_core.detectors.segmenter`, described by ``defaults.segmenter``), ``context.<param>`` when it carries a
context model (:mod:`rgi_core.detectors.context`, described by ``defaults.context``), ``encoder.<param>`` when it
carries an encoder (:mod:`rgi_core.priors.encoder`, described by ``defaults.encoder``), and
``phi_net.<operator>.<param>`` for each known degradation it has a learned BIGPrior fusion for
(:mod:`rgi_core.priors.phinet`, described by ``defaults.phi_nets.<operator>``). The safetensors header's
``__metadata__`` holds one key, ``rgi``, whose value is a JSON document::

    {"format": 1, "name": ..., "architecture": {ArchSpec fields}, "training": {data, split, recipe,
     steps, seed, ...}, "defaults": {"lam": ..., ...}, "library_version": ..., "created_at": ...}

``load_prior`` accepts a shipped prior's name (``brick-64``), a local path or any fsspec URL.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from rgi_core.detectors.context import ContextMap
from rgi_core.detectors.segmenter import LearnedMap
from rgi_core.device import resolve_device
from rgi_core.priors.encoder import Encoder, encoder_from_parts
from rgi_core.priors.nets import ArchSpec, Discriminator, Generator
from rgi_core.priors.phinet import PhiNet, phi_net_from_parts
from rgi_core.version import __version__

FORMAT_VERSION = 1
SEGMENTER_PREFIX = "segmenter."
CONTEXT_PREFIX = "context."
ENCODER_PREFIX = "encoder."
PHI_NET_PREFIX = "phi_net."
M = TypeVar("M", LearnedMap, ContextMap)  # the detectors a file stores as a net and its description
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol 2+, torch.save zip archives


class PriorFormatError(ValueError):
    """A prior file that is not a valid rgi safetensors checkpoint (pickles are refused here)."""


@dataclass
class Prior:
    """A loaded prior: generator and discriminator in eval mode with frozen weights.

    Attributes:
        name: shipped name or file stem.
        generator / discriminator: the nets, on ``device``.
        spec: their architecture.
        meta: the full metadata document (training data, split, defaults, ...).
        prior_id: sha256 of the file's bytes (identifies the exact weights in catalogs).
        segmenter: the learned anomaly segmenter stored with the prior, or None.
        context: the context model stored with the prior (a detector the triage reads), or None.
        encoder: the encoder x -> z stored with the prior (the solver's amortised start), or None.
        phi_nets: BIGPrior's learned reliance per known degradation (operator name -> :class:`PhiNet`).
    """

    name: str
    generator: Generator
    discriminator: Discriminator
    spec: ArchSpec
    meta: dict[str, Any] = field(default_factory=dict)
    prior_id: str = ""
    segmenter: LearnedMap | None = None
    encoder: Encoder | None = None
    context: ContextMap | None = None
    phi_nets: dict[str, PhiNet] = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        """Calibrated inversion defaults stored with the prior (e.g. ``lam``)."""
        return dict(self.meta.get("defaults", {}))

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Prior:
        """Move the nets (in place) to a device and/or floating dtype; returns self."""
        self.generator.to(device=device, dtype=dtype)
        self.discriminator.to(device=device, dtype=dtype)
        if self.segmenter is not None:
            self.segmenter.net.to(device=device, dtype=dtype)
        if self.encoder is not None:
            self.encoder.to(device=device, dtype=dtype)
        if self.context is not None:
            self.context.net.to(device=device, dtype=dtype)
        for net in self.phi_nets.values():
            net.to(device=device, dtype=dtype)
        return self


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with every parametrised tensor (e.g. spectral norm) replaced by the value it computes.

    Loads into the same architecture built without the parametrisation; ``module`` is not modified
    (removing parametrisations from a deepcopy would also break the original, which shares its class).
    """
    from torch.nn.utils import parametrize

    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for mname, sub in module.named_modules():
            if "parametrizations" in mname.split("."):
                continue
            prefix = f"{mname}." if mname else ""
            if parametrize.is_parametrized(sub):
                for pname in sub.parametrizations.keys():
                    out[prefix + pname] = getattr(sub, pname).detach().cpu().contiguous()
            for n, t in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
                out[prefix + n] = t.detach().cpu().contiguous()
    return out


def prior_bytes(
    generator: Generator,
    discriminator: Discriminator,
    *,
    name: str,
    training: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> bytes:
    """Serialise a prior to safetensors bytes (spectral norm baked into the weights)."""
    tensors = {f"generator.{k}": v for k, v in plain_state_dict(generator).items()}
    tensors |= {f"discriminator.{k}": v for k, v in plain_state_dict(discriminator).items()}
    meta = {
        "format": FORMAT_VERSION,
        "name": name,
        "architecture": generator.spec.to_dict(),
        "training": training or {},
        "defaults": defaults or {},
        "library_version": __version__,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return st_save(tensors, metadata={"rgi": json.dumps(meta, sort_keys=True)})


def save_prior(path: str | Path, generator: Generator, discriminator: Discriminator, **meta: Any) -> Path:
    """Write a prior file atomically (temp file + rename). ``meta``: name, training, defaults."""
    path = Path(path)
    meta.setdefault("name", path.stem)
    _write_atomic(path, prior_bytes(generator, discriminator, **meta))
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def update_metadata(path: str | Path, segmenter: LearnedMap | None = None, encoder: Encoder | None = None,
                    phi_nets: dict[str, PhiNet] | None = None, context: ContextMap | None = None,
                    **updates: Any) -> dict[str, Any]:
    """Rewrite a local prior file with metadata fields replaced (e.g. ``defaults=...``).

    The generator's and discriminator's tensors are kept; with ``segmenter`` the file's segmenter tensors
    are replaced by its weights (its description belongs in ``defaults.segmenter``: ``segmenter.to_dict()``), and
    likewise with ``encoder`` (described in ``defaults.encoder``), whose weights are stored in float16: it only
    proposes a starting latent, and float32 would make it 5x the size of the generator and discriminator together
    (brick-64: 12 MB against 2.4 MB); loading casts them back to the prior's dtype. ``phi_nets`` replaces the
    phi-nets of the operators it names (each described in ``defaults.phi_nets.<operator>``), and ``context`` the
    context model's tensors (described in ``defaults.context``). Written atomically; returns the new metadata document.
    """
    path = Path(path)
    data = path.read_bytes()
    meta = read_metadata(data) | updates
    tensors = st_load(data)
    if segmenter is not None:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(SEGMENTER_PREFIX)}
        tensors |= {SEGMENTER_PREFIX + k: v for k, v in plain_state_dict(segmenter.net).items()}
    if encoder is not None:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(ENCODER_PREFIX)}
        tensors |= {ENCODER_PREFIX + k: v.half() if v.is_floating_point() else v
                    for k, v in plain_state_dict(encoder).items()}
    if context is not None:
        tensors = {k: v for k, v in tensors.items() if not k.startswith(CONTEXT_PREFIX)}
        tensors |= {CONTEXT_PREFIX + k: v for k, v in plain_state_dict(context.net).items()}
    for op, net in (phi_nets or {}).items():
        prefix = f"{PHI_NET_PREFIX}{op}."
        tensors = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
        tensors |= {prefix + k: v for k, v in plain_state_dict(net).items()}
    _write_atomic(path, st_save(tensors, metadata={"rgi": json.dumps(meta, sort_keys=True)}))
    return meta


def _safetensors_header(data: bytes) -> bool:
    """Whether ``data`` opens like safetensors: an 8-byte length that fits, then a JSON object.

    Checked before the pickle magic: a header of 128 + 256 k bytes makes a safetensors file start with 0x80,
    the first byte of a pickle (the shipped gravel-64 did).
    """
    if len(data) < 9:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return n <= len(data) - 8 and data[8:9] == b"{"


def read_metadata(data: bytes) -> dict[str, Any]:
    """The ``rgi`` metadata document from safetensors bytes, without loading tensors."""
    if not _safetensors_header(data) and data.startswith(_PICKLE_MAGIC):
        raise PriorFormatError(
            "this looks like a pickle / torch.save file; rgi loads priors only from safetensors "
            "(pickles can run arbitrary code). Convert it with rgi_core.priors.save_prior."
        )
    if len(data) < 8:
        raise PriorFormatError("file too short to be a safetensors prior")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise PriorFormatError("not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["rgi"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PriorFormatError(f"not an rgi prior (no 'rgi' metadata in the safetensors header): {exc}") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise PriorFormatError(f"unsupported prior format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    return meta


def shipped_priors() -> dict[str, Path]:
    """Priors shipped inside the package, by name."""
    root = resources.files("rgi_core") / "priors"
    if not root.is_dir():
        return {}
    return {p.name.removesuffix(".safetensors"): Path(str(p)) for p in root.iterdir()
            if p.name.endswith(".safetensors")}


def _read_source(name_or_path: str | Path, storage_options: dict[str, Any] | None = None) -> tuple[str, bytes]:
    shipped = shipped_priors()
    s = str(name_or_path)
    if s in shipped:
        return s, shipped[s].read_bytes()
    if "://" in s:
        import fsspec

        with fsspec.open(s, "rb", **(storage_options or {})) as f:
            return Path(s.split("?")[0]).stem, f.read()
    p = Path(s)
    if p.is_file():
        return p.stem, p.read_bytes()
    raise FileNotFoundError(
        f"no prior named or at {s!r}; shipped priors: {sorted(shipped) or 'none'}; "
        "otherwise give a path or fsspec URL to a .safetensors prior"
    )


def load_prior_bytes(data: bytes, name: str = "prior", device: str | torch.device = "auto") -> Prior:
    """Build a :class:`Prior` from safetensors bytes."""
    meta = read_metadata(data)
    try:  # a wrong resolution / channel count or unknown field: a clear error before any work
        spec = ArchSpec(**meta["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PriorFormatError(f"{name}: invalid architecture in metadata: {exc}") from exc
    try:
        tensors = st_load(data)
    except Exception as exc:  # noqa: BLE001  safetensors raises its own error types on damaged files
        raise PriorFormatError(f"{name}: damaged safetensors file: {type(exc).__name__}: {exc}") from exc
    g, d = Generator(spec), Discriminator(spec)
    for prefix, net in (("generator.", g), ("discriminator.", d)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise PriorFormatError(f"{name}: tensors do not match the architecture in metadata: {exc}") from exc
    seg = _net_map(LearnedMap, tensors, meta, SEGMENTER_PREFIX, name)
    ctx = _net_map(ContextMap, tensors, meta, CONTEXT_PREFIX, name)
    enc = _encoder(tensors, meta, spec, name)
    phi = _phi_nets(tensors, meta, spec, name)
    dev = resolve_device(device)
    for net in (g, d, *([seg.net] if seg else []), *([ctx.net] if ctx else []), *([enc] if enc else []),
                *phi.values()):
        net.eval().requires_grad_(False).to(dev)
    return Prior(
        name=meta.get("name") or name,
        generator=g,
        discriminator=d,
        spec=spec,
        meta=meta,
        prior_id=hashlib.sha256(data).hexdigest(),
        segmenter=seg,
        encoder=enc,
        context=ctx,
        phi_nets=phi,
    )


def _part(tensors: dict[str, torch.Tensor], meta: dict[str, Any], key: str,
          name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """An optional part of a prior file: its ``KEY.*`` tensors and ``defaults.KEY``, both or neither (None)."""
    prefix = key + "."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    described = (meta.get("defaults") or {}).get(key)
    if not state and not described:
        return None
    if not state or not described:
        raise PriorFormatError(f"{name}: {'an' if key[0] in 'aeiou' else 'a'} {key} needs both its tensors and "
                               f"defaults.{key}; the file has {'only the tensors' if state else 'only the metadata'}")
    return state, described


def _net_map(cls: type[M], tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str, name: str) -> M | None:
    """A net-read detector of a file (``<prefix>*`` tensors, ``defaults.<prefix>``): the learned segmenter
    (:class:`LearnedMap`) or the context model (:class:`ContextMap`), or None."""
    part = _part(tensors, meta, prefix[:-1], name)
    if part is None:
        return None
    try:
        return cls.from_parts(part[1], part[0])
    except ValueError as exc:
        raise PriorFormatError(f"{name}: {exc}") from exc


def _encoder(tensors: dict[str, torch.Tensor], meta: dict[str, Any], spec: ArchSpec, name: str) -> Encoder | None:
    """The encoder of a file (``encoder.*`` tensors, ``defaults.encoder``), or None."""
    part = _part(tensors, meta, ENCODER_PREFIX[:-1], name)
    if part is None:
        return None
    try:
        return encoder_from_parts(spec, part[1], part[0])
    except RuntimeError as exc:
        raise PriorFormatError(f"{name}: encoder tensors do not match defaults.encoder: {exc}") from exc


def _phi_nets(tensors: dict[str, torch.Tensor], meta: dict[str, Any], spec: ArchSpec,
              name: str) -> dict[str, PhiNet]:
    """The phi-nets of a file (``phi_net.<operator>.*`` tensors, ``defaults.phi_nets.<operator>``), by operator."""
    described = (meta.get("defaults") or {}).get("phi_nets") or {}
    stored = {k[len(PHI_NET_PREFIX):].split(".", 1)[0] for k in tensors if k.startswith(PHI_NET_PREFIX)}
    if set(described) != stored:
        raise PriorFormatError(f"{name}: phi-nets need both their tensors and defaults.phi_nets; tensors for "
                               f"{sorted(stored)}, metadata for {sorted(described)}")
    out = {}
    for op, record in described.items():
        prefix = f"{PHI_NET_PREFIX}{op}."
        try:
            out[op] = phi_net_from_parts(spec.channels, record,
                                         {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except RuntimeError as exc:
            raise PriorFormatError(f"{name}: phi-net {op!r} tensors do not match defaults.phi_nets: {exc}") from exc
    return out


def load_prior(name_or_path: str | Path, device: str | torch.device = "auto",
               storage_options: dict[str, Any] | None = None) -> Prior:
    """Load a prior by shipped name, local path or fsspec URL (``storage_options`` for its filesystem),
    onto ``device`` ('auto' picks a GPU)."""
    name, data = _read_source(name_or_path, storage_options)
    return load_prior_bytes(data, name=name, device=device)


def random_prior(spec: ArchSpec, seed: int = 0, name: str = "random") -> Prior:
    """An untrained prior with seeded random weights (for tests and benchmarks), through the file format.

    BatchNorm running statistics are set from a forward pass on random latents so that G's output
    spans a useful range in eval mode.
    """
    torch.manual_seed(seed)
    g, d = Generator(spec), Discriminator(spec)
    calibrate_batchnorm(g, seed=seed)
    return load_prior_bytes(prior_bytes(g, d, name=name), name=name, device="cpu")


@torch.no_grad()
def calibrate_batchnorm(g: Generator, seed: int = 0, batches: int = 4, batch_size: int = 64) -> Generator:
    """Re-estimate G's BatchNorm running statistics from forward passes on seeded N(0, I) latents.

    Used for untrained generators and for EMA-averaged weights, whose statistics the raw generator's
    running averages do not describe. Leaves ``g`` in eval mode; returns it.
    """
    device = next(g.parameters()).device
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
    g.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        g(torch.randn((batch_size, *g.latent_shape()), generator=gen).to(device))
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return g.eval()
