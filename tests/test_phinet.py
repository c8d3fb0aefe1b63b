"""BIGPrior's learned fusion: the phi-net, its training pairs, its place in the prior file and in the solve."""

from __future__ import annotations

import pytest
import torch
from conftest import generate

from rgi_core import invert, make_config
from rgi_core.calibration import phi_net_pairs, phi_net_physics
from rgi_core.inversion.operators import GaussianNoise, Identity, Inpainting
from rgi_core.priors import load_prior, save_prior, update_metadata
from rgi_core.priors.files import PriorFormatError
from rgi_core.priors.phinet import PhiNet, PhiNetConfig, fuse, train_phi_net

SMALL = PhiNetConfig(images=8, solve_iterations=10, n_init=8, method="mse", steps=150, batch=8, width=8, depth=3)


@pytest.fixture(scope="module")
def noise_net(tiny_prior):
    pairs = phi_net_pairs(tiny_prior, generate(tiny_prior, 8, seed=5), "noise", SMALL)
    return (*train_phi_net(pairs, SMALL), pairs)


def test_fusion_and_net_shapes():
    a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    assert torch.equal(fuse(torch.full((1, 1, 2, 2), 0.25), a, b), torch.full((1, 1, 2, 2), 0.25))
    net = PhiNet(3, width=4, depth=3)
    phi = net(torch.rand(2, 3, 16, 24), torch.rand(2, 3, 16, 24), torch.ones(1, 1, 16, 24))
    assert phi.shape == (2, 1, 16, 24) and ((phi > 0) & (phi < 1)).all()  # any size, one channel, in (0, 1)
    with pytest.raises(ValueError, match="depth"):
        PhiNet(1, depth=1)


def test_phi_net_physics_draws_holes_of_a_quarter_to_half_the_side():
    g = torch.Generator().manual_seed(0)
    holes = 1 - phi_net_physics("inpaint", 16, 32, g).mask  # (16, 1, 32, 32)
    rows, cols = holes.amax(3).sum((1, 2)), holes.amax(2).sum((1, 2))
    assert ((rows >= 8) & (rows <= 16) & (cols >= 8) & (cols <= 16)).all()
    with pytest.raises(ValueError, match="no phi-net"):
        phi_net_physics("identity", 1, 32, g)


def test_pairs_and_training_fit_the_fusion_better_than_either_input(noise_net):
    net, record, pairs = noise_net
    assert set(pairs) == {"degraded", "generated", "observed", "clean"} and len(pairs["clean"]) == 8
    assert not torch.equal(pairs["degraded"], pairs["clean"])  # the noise is in the degraded input
    # the learned phi fuses at least as well as the better of G(z) alone and the degraded input on its pairs
    assert record["mse_fused"] <= 1.02 * min(record["mse_generated"], record["mse_degraded"])
    assert record["pairs"] == 8 and record["steps"] == SMALL.steps


def test_a_stored_phi_net_is_used_for_its_degradation_only(tiny_prior, noise_net, tmp_path):
    net, record, _ = noise_net
    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    update_metadata(path, phi_nets={"noise": net}, defaults={"phi_nets": {"noise": record}})
    prior = load_prior(str(path), device="cpu")
    assert set(prior.phi_nets) == {"noise"}
    x = generate(tiny_prior, 3, seed=9)
    physics = GaussianNoise(0.1, seed=1)
    y = physics(x).clamp(0, 1)
    cfg = make_config("mse", iterations=5, n_init=8, device="cpu")
    learned = invert(y, prior, cfg, physics)
    with torch.no_grad():
        phi = net(y, learned.generated, torch.ones(1, 1, 32, 32))
    torch.testing.assert_close(learned.phi, phi)
    torch.testing.assert_close(learned.restored, fuse(phi, y, learned.generated).clamp(0, 1))
    heuristic = invert(y, prior, cfg.replace(learned_phi=False), physics)
    assert not torch.equal(heuristic.phi, learned.phi)
    assert torch.equal(heuristic.generated, learned.generated)  # the fusion only: the solve is the same
    # mask-free cleaning and other degradations keep the heuristic; asking for a missing net is an error
    assert torch.equal(invert(y, prior, cfg, Identity()).phi, invert(y, tiny_prior, cfg, Identity()).phi)
    known = Inpainting(torch.ones(32, 32))
    with pytest.raises(ValueError, match="no phi-net for 'inpaint'"):
        invert(y, prior, cfg.replace(learned_phi=True), known)
    # tensors without their description (or the reverse) are a clear error
    broken = save_prior(tmp_path / "b.safetensors", tiny_prior.generator, tiny_prior.discriminator,
                        defaults={"phi_nets": {"noise": record}})
    with pytest.raises(PriorFormatError, match="phi-nets need both"):
        load_prior(str(broken))


@pytest.mark.integration
def test_cli_calibrate_trains_phi_nets_into_the_prior(tiny_prior, tmp_path):
    from conftest import write_generated

    from flows.cli import main

    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    clean = write_generated(tiny_prior, tmp_path / "clean", 4, seed=2)
    into = ["calibrate", str(clean), "--prior", str(path), "--into-prior", "--images-n", "4", "--iterations", "5",
            "--rounds", "1", "--fusion-images", "0"]
    assert main([*into, "--phi-nets", "noise,inpaint", "--phi-images", "4", "--phi-steps", "3",
                 "--phi-method", "mse"]) == 0
    prior = load_prior(path, device="cpu")
    assert set(prior.phi_nets) == {"noise", "inpaint"}
    assert prior.defaults["phi_nets"]["noise"]["steps"] == 3 and prior.defaults["phi_nets"]["inpaint"]["pairs"] == 4
    assert main(into) == 0  # recalibrating without the flag keeps them
    assert set(load_prior(path, device="cpu").phi_nets) == {"noise", "inpaint"}
    with pytest.raises(SystemExit):
        main([*into, "--phi-nets", "identity"])
