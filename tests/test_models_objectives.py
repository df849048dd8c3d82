"""Registry-wide checks: every encoder x objective runs forward/backward, every parameter gets a gradient,
a few optimizer steps lower the loss; shapes follow the DatasetSpec."""

import pytest
import torch

from latentbench.config import load_config
from latentbench.data import DatasetSpec, make_synthetic
from latentbench.models import ClassifierHead, ConvEncoder, build_encoder_decoder
from latentbench.objectives import build_objective
from latentbench.registry import RegistryError, get, names

GRAY = DatasetSpec("gray", 1, 28, 28, tuple("0123456789"), (0.5,), (0.25,))
RGB = DatasetSpec("rgb", 3, 32, 32, tuple("0123456789"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def cfg_for(encoder: str, objective: str, *extra: str):
    return load_config(None, [f'model.encoder="{encoder}"', f'objective.name="{objective}"',
                              "model.conv_widths=[8,16,16,32]", "model.mlp_hidden=[64,32]", "model.latent_dim=16",
                              "objective.proj_hidden=32", "objective.proj_dim=16", *extra])


def batch(spec: DatasetSpec, n: int = 16):
    torch.manual_seed(0)
    return torch.rand(n, *spec.shape), torch.randint(0, spec.num_classes, (n,))


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["gray28", "rgb32"])
@pytest.mark.parametrize("encoder", names("encoder"))
def test_encoder_and_decoder_shapes(spec, encoder):
    enc, dec = build_encoder_decoder(spec, cfg_for(encoder, "autoencoder").model)
    x, _ = batch(spec)
    z, skips = enc.features(x)
    assert z.shape == (16, 16) and enc(x).shape == (16, 16)
    x_hat = dec(z, skips)
    assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["gray28", "rgb32"])
@pytest.mark.parametrize("strides,last_side", [([1, 2, 2, 2], {28: 4, 32: 4}), ([1, 1, 2, 2], {28: 7, 32: 8}),
                                               ([1, 2, 1, 2], {28: 7, 32: 8}), ([1, 1, 1, 2], {28: 14, 32: 16})])
@pytest.mark.parametrize("skips", [False, True])
def test_conv_strides_set_the_map_sizes_and_the_decoder_mirrors_them(spec, strides, last_side, skips):
    cfg = cfg_for("conv", "autoencoder", f"model.conv_strides={strides}", f"model.skips={str(skips).lower()}")
    enc, dec = build_encoder_decoder(spec, cfg.model)
    x, _ = batch(spec)
    z, maps = enc.features(x)
    assert maps[-1].shape[-1] == last_side[spec.width] and z.shape == (16, 16)
    up_strides = [up[0].stride[0] for up in dec.ups]
    assert up_strides == strides[:0:-1]  # the decoder undoes blocks 4, 3, 2 in that order
    assert dec(z, maps if skips else None).shape == x.shape


@pytest.mark.parametrize("strides", [[1, 2, 2, 2], [1, 1, 2, 2]])
def test_conv_pool_avg_maps_the_mean_of_the_last_map_to_z(strides):
    cfg = cfg_for("conv", "autoencoder", "model.conv_pool=\"avg\"", f"model.conv_strides={strides}")
    enc, dec = build_encoder_decoder(RGB, cfg.model)
    x, _ = batch(RGB)
    z, maps = enc.features(x)
    last = maps[-1]
    means = torch.stack([last[:, c].reshape(len(x), -1).sum(1) / last[0, c].numel()
                         for c in range(last.shape[1])], dim=1)
    assert enc.fc.in_features == last.shape[1]
    torch.testing.assert_close(z, means @ enc.fc.weight.T + enc.fc.bias)
    assert dec(z).shape == x.shape  # the decoder still starts from the whole last map


@pytest.mark.parametrize("strides", [[1, 2, 2, 2], [1, 1, 2, 2], [1, 2, 1, 2]])
@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["gray28", "rgb32"])
def test_maxpool_downsampling_halves_the_maps_as_strides_do(spec, strides):
    strided, pooled = (build_encoder_decoder(spec, cfg_for("conv", "autoencoder", "model.skips=true",
                                                           f"model.conv_strides={strides}",
                                                           f'model.conv_downsample="{how}"').model)
                       for how in ("stride", "maxpool"))
    x, _ = batch(spec)
    (z_s, maps_s), (z_p, maps_p) = strided[0].features(x), pooled[0].features(x)
    assert [m.shape for m in maps_p] == [m.shape for m in maps_s] and z_p.shape == z_s.shape
    assert pooled[1](z_p, maps_p).shape == x.shape  # the decoder and its skips fit as before
    encoder = pooled[0].eval()
    h = encoder.normalize(x)
    for block, stride in zip(encoder.blocks, strides):  # conv at the full side, 2x2 max, then BN and ReLU
        conv, bn = block[0], block[-2]
        assert conv.stride == (1, 1)
        y = conv(h)
        if stride == 2:
            y = torch.nn.functional.max_pool2d(y, 2, ceil_mode=True)
        h_next = torch.relu(bn(y))
        torch.testing.assert_close(block(h), h_next)
        h = h_next


def test_skip_decoder_uses_encoder_maps():
    cfg = cfg_for("conv", "autoencoder", "model.skips=true")
    enc, dec = build_encoder_decoder(RGB, cfg.model)
    x, _ = batch(RGB)
    z, skips = enc.features(x)
    assert len(skips) == 4
    assert not torch.allclose(dec(z, skips), dec(z, None))


@pytest.mark.parametrize("encoder,skips,side", [("mlp", False, 28), ("conv", False, 28), ("conv", True, 28),
                                                      ("conv", True, 32)])
def test_decoders_are_the_sigmoid_of_their_logits_and_bce_trains_through_them(encoder, skips, side):
    """``decoder(z) == sigmoid(decoder.logits(z))``, also where the conv decoder resizes (28x28; with skips
    its maps are resized to the encoder's 7x7 before they are added), and a
    ``bce`` autoencoder gets the gradients of BCE on ``decoder(z)`` through the logits path."""
    spec = DatasetSpec("mnist", 1, side, side, tuple("0123456789"), (0.13,), (0.31,))
    cfg = cfg_for(encoder, "autoencoder", f"model.skips={str(skips).lower()}", 'objective.recon_loss="bce"')
    torch.manual_seed(0)
    objective = build_objective(spec, cfg).double()
    x = torch.rand(6, 1, side, side, dtype=torch.float64)
    z, maps = objective.encoder.features(x)
    x_hat = objective.decoder(z, maps)
    assert x_hat.shape == x.shape and torch.equal(x_hat, torch.sigmoid(objective.decoder.logits(z, maps)))
    loss, stats = objective((x, torch.zeros(6, dtype=torch.long)))
    loss.backward()
    ours = [p.grad.clone() for p in objective.parameters()]
    objective.zero_grad()
    z, maps = objective.encoder.features(x)
    x_hat = objective.decoder(z, maps)
    reference = torch.nn.functional.binary_cross_entropy(x_hat, x)
    reference.backward()
    assert torch.allclose(loss, reference, rtol=1e-10)
    assert torch.isclose(stats["mae"].double(), (x_hat - x).abs().mean(), rtol=1e-6)
    for a, p in zip(ours, objective.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-7, atol=1e-12)


def test_report_architectures():
    cfg = load_config(None, [])
    enc, dec = build_encoder_decoder(DatasetSpec("mnist", 1, 28, 28, tuple("0123456789"), (0.13,), (0.31,)),
                                     cfg.model)
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 128), (128, 128)]
    z = torch.randn(5, 128)
    assert torch.equal(dec(z), torch.sigmoid(dec.logits(z)))  # a sigmoid output: pixels in (0, 1)
    conv, _ = build_encoder_decoder(RGB, cfg.model)
    assert isinstance(conv, ConvEncoder)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in conv.modules()) == 4
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in conv.modules()) == 4
    head = ClassifierHead(128, 64, 10, 0.2)
    assert [type(m).__name__ for m in head.net] == ["Linear", "ReLU", "Dropout", "Linear"]


CASES = [(e, o, extra) for e in names("encoder") for o, extra in [
    ("autoencoder", ()), ("autoencoder", ("objective.noise_std=0.2",)),
    ("autoencoder", ('objective.recon_augment="digits"',)), ("supervised", ()),
    ("supervised", ('objective.supervised_augment="crop_flip"',)), ("contrastive", ()),
    ("contrastive", ("objective.recon_weight=1.0", "objective.noise_std=0.1")),
    ("contrastive", ("objective.recon_weight=1.0", "objective.noise_std=0.1", 'objective.recon_from="view"')),
    ("contrastive", ("objective.decoupled=true",)),
]]


@pytest.mark.parametrize("encoder,objective,extra", CASES)
@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["gray28", "rgb32"])
def test_every_parameter_gets_a_gradient(spec, encoder, objective, extra):
    obj = build_objective(spec, cfg_for(encoder, objective, *extra))
    obj.train()
    loss, stats = obj(batch(spec))
    loss.backward()
    missing = [name for name, p in obj.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert "loss" in stats and all(v.dim() == 0 for v in stats.values())
    obj.eval()
    with torch.no_grad():
        _, val_stats = obj(batch(spec))
    assert obj.monitor in val_stats


@pytest.mark.parametrize("encoder,objective,extra", [c for c in CASES if c[1] != "supervised" or not c[2]])
def test_a_few_steps_lower_the_loss(encoder, objective, extra):
    spec = GRAY if encoder == "mlp" else RGB
    torch.manual_seed(0)
    obj = build_objective(spec, cfg_for(encoder, objective, *extra, "model.classifier_dropout=0.0"))
    data = make_synthetic(32, 10, spec.channels, spec.height, seed=0)
    x, y = data.x.float() / 255, data.y
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    obj.train()

    def loss_now():
        torch.manual_seed(1)  # the same views/noise before and after
        with torch.no_grad():
            return obj((x, y))[0].item()

    before = loss_now()
    for _ in range(60 if objective == "contrastive" else 25):
        loss, _ = obj((x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    factor = 0.95 if objective == "contrastive" else 0.9  # NT-Xent falls slowly from ~log(2N - 1)
    assert loss_now() < factor * before


def test_unknown_names_list_the_choices():
    with pytest.raises(RegistryError, match="choose one of: autoencoder, contrastive, supervised"):
        get("objective", "autoencoer")
    with pytest.raises(RegistryError, match="conv, mlp"):
        build_encoder_decoder(GRAY, cfg_for("resnet", "autoencoder").model)


def test_mlp_decoder_mirrors_the_encoder_unless_given_its_own_widths():
    mirrored = build_encoder_decoder(GRAY, cfg_for("mlp", "autoencoder").model)[1]
    assert [m.out_features for m in mirrored.net if isinstance(m, torch.nn.Linear)] == [32, 64, 784]
    cfg = cfg_for("mlp", "autoencoder", "model.mlp_decoder_hidden=[48,96,128]")
    own = build_encoder_decoder(GRAY, cfg.model)[1]
    assert [m.out_features for m in own.net if isinstance(m, torch.nn.Linear)] == [48, 96, 128, 784]
    assert own(torch.zeros(2, 16)).shape == (2, *GRAY.shape)


def test_latent_noise_scales_with_each_dimension_and_only_in_training():
    from latentbench.objectives import perturb_latent
    torch.manual_seed(0)
    z = torch.randn(20_000, 3) * torch.tensor([0.1, 1.0, 10.0])
    noise = perturb_latent(z, 0.5) - z
    assert torch.allclose(noise.std(0), 0.5 * z.std(0), rtol=0.03)
    obj = build_objective(GRAY, cfg_for("mlp", "autoencoder", "objective.latent_noise=0.5"))
    x, y = batch(GRAY)
    obj.eval()
    with torch.no_grad():
        a, b = obj((x, y))[0], obj((x, y))[0]
    assert torch.equal(a, b)  # evaluation is deterministic: no noise
    obj.train()
    assert not torch.equal(obj((x, y))[0], obj((x, y))[0])


@pytest.mark.parametrize("activation,module", [("relu", torch.nn.ReLU), ("gelu", torch.nn.GELU),
                                               ("silu", torch.nn.SiLU), ("leaky_relu", torch.nn.LeakyReLU)])
def test_mlp_activation_is_used_between_every_hidden_layer(activation, module):
    encoder, decoder = build_encoder_decoder(GRAY, cfg_for("mlp", "autoencoder",
                                                           f'model.mlp_activation="{activation}"').model)
    for net, hidden_layers in ((encoder.net, 2), (decoder.net, 2)):
        assert sum(isinstance(m, module) for m in net) == hidden_layers


def test_mlp_encoder_batchnorm_follows_every_hidden_layer():
    cfg = cfg_for("mlp", "autoencoder", "model.mlp_batchnorm=true")
    encoder, decoder = build_encoder_decoder(GRAY, cfg.model)
    kinds = [type(m).__name__ for m in encoder.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in decoder.net)
    assert encoder(torch.rand(4, *GRAY.shape)).shape == (4, 16)


def test_masking_noise_changes_training_input_only():
    obj = build_objective(GRAY, cfg_for("mlp", "autoencoder", "objective.mask_p=0.5"))
    assert obj.mask_p == 0.5
    x, y = batch(GRAY)
    obj.eval()
    with torch.no_grad():
        assert torch.equal(obj((x, y))[0], obj((x, y))[0])  # evaluation reconstructs the clean input
    obj.train()
    assert not torch.equal(obj((x, y))[0], obj((x, y))[0])


@pytest.mark.parametrize("option,attribute,target_is_view", [("recon_augment", "view", True),
                                                            ("input_augment", "input_view", False)])
def test_autoencoder_views_in_training_only(option, attribute, target_is_view):
    """recon_augment: the view is input and target; input_augment: the encoder sees the view, the target stays
    the clean image. Evaluation sees clean x either way."""
    obj = build_objective(GRAY, cfg_for("mlp", "autoencoder", f'objective.{option}="digits"',
                                        'objective.recon_loss="l1"'))
    x, y = batch(GRAY)
    seen = []
    setattr(obj, attribute, lambda images: seen.append(images) or torch.flip(images, dims=[-1]))
    obj.train()
    loss, _ = obj((x, y))
    with torch.no_grad():
        x_hat = obj.decoder(obj.encoder(torch.flip(x, dims=[-1])))
    target = torch.flip(x, dims=[-1]) if target_is_view else x
    assert len(seen) == 1 and torch.allclose(loss, (x_hat - target).abs().mean(), atol=1e-6)
    obj.eval()
    with torch.no_grad():
        obj((x, y))
    assert len(seen) == 1  # no augmentation at evaluation


def test_mix_rows_takes_each_row_from_a_with_probability_p():
    from latentbench.objectives import mix_rows
    torch.manual_seed(0)
    a, b = torch.ones(10_000, 1, 2, 2), torch.zeros(10_000, 1, 2, 2)
    mixed = mix_rows(a, b, 0.3)
    per_row = mixed.flatten(1)
    assert torch.all((per_row == per_row[:, :1]).all(1))  # whole rows, never a blend
    assert abs(per_row[:, 0].mean().item() - 0.3) < 0.02
    assert torch.equal(mix_rows(a, b, 0.0), b) and torch.equal(mix_rows(a, b, 1.0), a)


def test_input_augment_p_views_only_part_of_the_batch():
    obj = build_objective(GRAY, cfg_for("mlp", "autoencoder", 'objective.input_augment="digits"',
                                        "objective.input_augment_p=0.5"))
    x = torch.rand(400, *GRAY.shape)
    obj.input_view = lambda images: images + 10  # a view that marks every row it touched
    torch.manual_seed(0)
    viewed = (obj.corrupted(x, obj.training_view(x)) > 5).flatten(1).all(1).float().mean().item()
    assert 0.4 < viewed < 0.6


def test_input_view_stops_after_input_augment_until_of_the_epochs():
    obj = build_objective(GRAY, cfg_for("mlp", "autoencoder", 'objective.input_augment="digits"',
                                        "objective.input_augment_until=0.6"))
    x = torch.rand(8, *GRAY.shape)
    obj.input_view = lambda images: images + 10
    used = []
    for epoch in range(10):
        obj.start_epoch(epoch, 10)
        used.append(bool((obj.corrupted(x, obj.training_view(x)) > 5).all()))
    assert used == [True] * 6 + [False] * 4


def test_encoder_frozen_from_trains_only_the_decoder_in_the_last_epochs():
    obj = build_objective(RGB, cfg_for("conv", "autoencoder", "model.skips=true",
                                       "objective.encoder_frozen_from=0.75"))
    optimizer = torch.optim.SGD(obj.parameters(), lr=0.1)
    x, y = batch(RGB)
    frozen = []
    for epoch in range(4):
        obj.train()
        obj.start_epoch(epoch, 4)
        obj.train()  # what the loop does each epoch must not unfreeze it
        frozen.append(obj.encoder_frozen)
        encoder_before = {k: v.clone() for k, v in obj.encoder.state_dict().items()}
        decoder_before = [p.detach().clone() for p in obj.decoder.parameters()]
        optimizer.zero_grad(set_to_none=True)
        obj((x, y))[0].backward()
        optimizer.step()
        encoder_after = obj.encoder.state_dict()
        encoder_changed = any(not torch.equal(v, encoder_before[k]) for k, v in encoder_after.items())
        decoder_changed = any(not torch.equal(p, q) for p, q in zip(obj.decoder.parameters(), decoder_before))
        assert decoder_changed
        # frozen: no gradient and no BatchNorm statistics update, so weights and running stats stay put
        assert encoder_changed != obj.encoder_frozen
        assert all((p.grad is None) == obj.encoder_frozen for p in obj.encoder.parameters())
    assert frozen == [False, False, False, True]
    assert not obj.encoder.training and obj.decoder.training
    obj.start_epoch(0, 4)  # a schedule that starts again thaws it
    assert obj.encoder.training and all(p.requires_grad for p in obj.encoder.parameters())


def test_invariance_weight_adds_the_pull_between_the_codes_of_image_and_view():
    from latentbench.losses import invariance_loss, reconstruction_loss
    obj = build_objective(GRAY, cfg_for("mlp", "autoencoder", 'objective.input_augment="digits"',
                                        "objective.input_augment_p=0", "objective.invariance_weight=0.5",
                                        'objective.recon_loss="bce"'))
    x = torch.rand(16, *GRAY.shape)
    x_view = torch.rand(16, *GRAY.shape)
    obj.input_view = lambda images: x_view
    obj.train()
    loss, stats = obj((x, torch.zeros(16, dtype=torch.long)))
    with torch.no_grad():
        z = obj.encoder(x)  # input_augment_p = 0: the decoder reconstructs from the clean image's code
        recon = reconstruction_loss(obj.decoder(z, []), x, "bce")
        expected = recon + 0.5 * invariance_loss(obj.encoder(x_view), z)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(stats["invariance"], invariance_loss(obj.encoder(x_view), z).detach(), atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in obj.encoder.parameters())
    obj.eval()
    _, eval_stats = obj((x, torch.zeros(16, dtype=torch.long)))
    assert "invariance" not in eval_stats  # validation measures reconstruction only


def test_invariance_with_views_as_input_pulls_a_second_independent_view_toward_the_first():
    from latentbench.losses import invariance_loss, reconstruction_loss
    obj = build_objective(GRAY, cfg_for("mlp", "autoencoder", 'objective.input_augment="digits"',
                                        "objective.input_augment_p=1", "objective.invariance_weight=0.5",
                                        'objective.recon_loss="bce"'))
    x = torch.rand(16, *GRAY.shape)
    first_view, second_view = torch.rand(16, *GRAY.shape), torch.rand(16, *GRAY.shape)
    views = iter([first_view, second_view])
    obj.input_view = lambda images: next(views)
    obj.train()
    loss, stats = obj((x, torch.zeros(16, dtype=torch.long)))
    with torch.no_grad():
        z = obj.encoder(first_view)  # input_augment_p = 1: the code of the first view reconstructs x
        recon = reconstruction_loss(obj.decoder(z, []), x, "bce")
        invariance = invariance_loss(obj.encoder(second_view), z)
    assert invariance.item() > 0.1  # two different views, not the same pixels twice (which would give 0)
    assert torch.allclose(stats["invariance"], invariance, atol=1e-6)
    assert torch.allclose(loss, recon + 0.5 * invariance, atol=1e-6)


def test_skips_from_decodes_from_the_code_alone_in_the_first_epochs():
    obj = build_objective(RGB, cfg_for("conv", "autoencoder", "model.skips=true", "objective.skips_from=0.5"))
    x, y = batch(RGB)
    seen = []
    original = obj.decoder.logits

    def spy(z, skips=None):
        seen.append(skips is not None)
        return original(z, skips)

    obj.decoder.logits = spy
    for epoch in range(4):
        obj.start_epoch(epoch, 4)
        obj.train()
        obj((x, y))
        obj.eval()
        obj((x, y))  # validation decodes as training does in the same epoch
    assert seen == [False, False, False, False, True, True, True, True]
    obj.decoder.logits = original
    obj.eval()
    with torch.no_grad():
        z, maps = obj.encoder.features(x)
        for epoch, decoded in ((0, obj.decoder(z, None)), (2, obj.decoder(z, maps))):
            obj.start_epoch(epoch, 4)
            assert torch.allclose(obj((x, y))[1]["mae"], (decoded - x).abs().mean())
        assert not torch.allclose(obj.decoder(z, None), obj.decoder(z, maps))
    fresh = build_objective(RGB, cfg_for("conv", "autoencoder", "model.skips=true",
                                         "objective.skips_from=0.5"))
    assert fresh.skips_on  # a model loaded for evaluation (no start_epoch) uses its skips


def test_contrastive_decoupled_config_reaches_the_loss():
    x, y = batch(RGB)
    values = {}
    for decoupled in ("false", "true"):
        torch.manual_seed(0)
        obj = build_objective(RGB, cfg_for("conv", "contrastive", f"objective.decoupled={decoupled}"))
        obj.train()
        torch.manual_seed(1)
        values[decoupled] = obj((x, y))[1]["nt_xent"]
    assert values["true"] < values["false"]  # same weights and views: only the positive left the denominator


@pytest.mark.parametrize("recon_from,training_passes", [("image", 2), ("view", 1)])
def test_contrastive_recon_from_view_decodes_the_first_corrupted_views_code(recon_from, training_passes):
    obj = build_objective(RGB, cfg_for("conv", "contrastive", "objective.recon_weight=1.0",
                                       "objective.noise_std=0.1", f'objective.recon_from="{recon_from}"',
                                       'objective.augment="none"'))  # views = the image: the noise shows
    x, y = batch(RGB)
    inputs, codes, decoded = [], [], []
    features, logits = obj.encoder.features, obj.decoder.logits

    def spy_features(v):
        inputs.append(v.detach().clone())
        z, maps = features(v)
        codes.append(z.detach().clone())
        return z, maps

    def spy_logits(z, skips=None):
        decoded.append(z.detach().clone())
        return logits(z, skips)

    obj.encoder.features, obj.decoder.logits = spy_features, spy_logits
    obj.train()
    torch.manual_seed(1)
    loss, stats = obj((x, y))
    loss.backward()
    n = x.shape[0]
    assert len(inputs) == training_passes and inputs[0].shape[0] == 2 * n
    assert torch.equal(inputs[0][n:], x)  # the second view: no denoising noise
    if recon_from == "view":
        assert not torch.allclose(inputs[0][:n], x) and (inputs[0][:n] - x).std() > 0.05  # the first: noisy
        assert torch.equal(decoded[0], codes[0][:n])
    else:
        assert torch.equal(inputs[0][:n], x) and not torch.allclose(inputs[1], x)
        assert torch.equal(decoded[0], codes[1])
    assert stats["mae"] > 0
    inputs.clear(), decoded.clear(), codes.clear()
    obj.eval()
    with torch.no_grad():
        obj((x, y))
    assert len(inputs) == 2 and torch.equal(inputs[1], x)  # validation: the clean image's code, either way
    assert torch.equal(decoded[0], codes[1])
