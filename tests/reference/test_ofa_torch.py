"""Tests of the PyTorch reference model against facts stated in the spec (ofa-imtcxr-spec.md §1.2, §3, §4, §7).

Sizes are checked on the meta device (nothing is allocated); behaviour is checked on a tiny random model.
"""

from __future__ import annotations

import pytest
import torch

from tests.reference.ofa_torch import (
    PAD_ID,
    OFAReference,
    RefConfig,
    count_unique_parameters,
    image_bucket_table,
    image_position_ids,
    image_position_index,
    ofa_config,
    randomize_,
    token_bucket_table,
)

# ---------------------------------------------------------------------------------------------------------
# Sizes and state-dict layout (spec §1.2, §7)
# ---------------------------------------------------------------------------------------------------------

SPEC_PARAMETER_COUNTS = {
    "ofa_tiny": 33_488_336,
    "ofa_medium": 92_892_000,
    "ofa_base": 182_238_536,
    "ofa_large": 472_977_152,
    "ofa_huge": 929_486_848,
}


def _meta_model(cfg: RefConfig) -> OFAReference:
    with torch.device("meta"):
        return OFAReference(cfg)


@pytest.fixture(scope="module")
def huge() -> OFAReference:
    return _meta_model(ofa_config("ofa_huge"))


@pytest.mark.parametrize("name", sorted(SPEC_PARAMETER_COUNTS))
def test_named_architecture_parameter_count(name):
    assert count_unique_parameters(_meta_model(ofa_config(name))) == SPEC_PARAMETER_COUNTS[name]


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="ofa_giant"):
        ofa_config("ofa_giant")


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_huge_per_part_parameter_counts(huge):
    # §7.2 / §7.5 / §7.3 / §7.6
    assert _numel(huge.encoder.layers[0]) == 19_690_256
    assert _numel(huge.decoder.layers[0]) == 26_254_112
    trunk = huge.encoder.embed_images
    assert _numel(trunk) == 43_179_072
    assert sum(isinstance(m, torch.nn.Conv2d) for m in trunk.modules()) == 145
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules()) == 145
    assert huge.encoder.embed_tokens.weight.numel() == 76_104_960
    text_tables = sum(t.weight.numel() for t in huge.encoder.token_rel_pos_table_list)
    image_tables = sum(t.weight.numel() for t in huge.encoder.image_rel_pos_table_list)
    assert (text_tables, image_tables) == (196_224, 2_646_528)


def test_per_layer_formulas_for_tiny():
    d, f, h = 256, 1024, 4  # §7.2 4D²+2DF+11D+3F+H and §7.5 8D²+2DF+19D+3F+2H; §7.6 gives the tiny values
    tiny = _meta_model(ofa_config("ofa_tiny"))
    assert _numel(tiny.encoder.layers[0]) == 4 * d * d + 2 * d * f + 11 * d + 3 * f + h == 792_324
    assert _numel(tiny.decoder.layers[0]) == 8 * d * d + 2 * d * f + 19 * d + 3 * f + 2 * h == 1_056_520


def test_huge_state_dict_key_counts(huge):
    sd = huge.state_dict()
    param_names = {n for n, _ in huge.named_parameters(remove_duplicate=False)}
    buffer_names = {n for n, _ in huge.named_buffers(remove_duplicate=False)}
    assert len(sd) == 1_903
    assert len(param_names) == 1_461 and len({id(p) for p in huge.parameters()}) == 1_459
    assert len(buffer_names) == 442
    assert sum(n.endswith("num_batches_tracked") for n in buffer_names) == 145
    assert set(sd) == param_names | buffer_names


def test_tied_embedding_is_one_tensor(huge):
    sd = huge.state_dict(keep_vars=True)
    tied = [sd[k] for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")]
    tied.append(sd["decoder.output_projection.weight"])
    assert all(t is tied[0] for t in tied)
    assert tuple(tied[0].shape) == (59_457, 1_280)


def test_huge_state_dict_names_and_shapes(huge):
    d, f, h = 1280, 5120, 16
    sd = huge.state_dict()
    expected = {
        "encoder.version": (1,),
        "encoder.token_rp_bucket": (1024, 1024),
        "encoder.image_rp_bucket": (1765, 1765),
        "encoder.type_embedding.weight": (2, d),
        "encoder.image_proj.weight": (d, 1024),
        "encoder.patch_layernorm_embedding.bias": (d,),
        "encoder.embed_positions.weight": (1026, d),
        "encoder.embed_image_positions.weight": (1765, d),
        "encoder.pos_q_linear.weight": (d, d),
        "encoder.layers.23.self_attn.c_attn": (h,),
        "encoder.layers.0.self_attn.q_proj.weight": (d, d),
        "encoder.layers.0.attn_ln.weight": (d,),
        "encoder.layers.0.ffn_layernorm.weight": (f,),
        "encoder.layers.0.fc1.weight": (f, d),
        "encoder.layer_norm.weight": (d,),
        "encoder.token_rel_pos_table_list.23.weight": (511, h),
        "encoder.image_rel_pos_table_list.0.weight": (6892, h),
        "encoder.embed_images.conv1.weight": (64, 3, 7, 7),
        "encoder.embed_images.bn1.num_batches_tracked": (),
        "encoder.embed_images.layer1.0.conv1.weight": (64, 64, 1, 1),
        "encoder.embed_images.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "encoder.embed_images.layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "encoder.embed_images.layer3.0.downsample.1.running_var": (1024,),
        "encoder.embed_images.layer3.35.conv2.weight": (256, 256, 3, 3),
        "encoder.embed_images.layer3.35.bn3.weight": (1024,),
        "decoder.version": (1,),
        "decoder.image_position_idx": (1026,),
        "decoder.embed_image_positions.weight": (1765, d),
        "decoder.image_pos_ln.weight": (d,),
        "decoder.code_layernorm_embedding.weight": (d,),
        "decoder.self_pos_k_linear.bias": (d,),
        "decoder.cross_pos_q_linear.weight": (d, d),
        "decoder.layers.11.encoder_attn.c_attn": (h,),
        "decoder.layers.11.self_attn_ln.weight": (d,),
        "decoder.layers.11.cross_attn_ln.bias": (d,),
        "decoder.layers.0.encoder_attn_layer_norm.weight": (d,),
        "decoder.token_rel_pos_table_list.11.weight": (511, h),
        "decoder.image_rel_pos_table_list.11.weight": (6892, h),
        "decoder.output_projection.weight": (59457, d),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "encoder.layers.24.fc1.weight" not in sd and "decoder.layers.12.fc1.weight" not in sd
    assert "encoder.embed_images.layer1.1.downsample.0.weight" not in sd
    assert not any(k.startswith("encoder.embed_images.layer4") or "w_resid" in k for k in sd)
    for key in ("encoder.token_rp_bucket", "encoder.image_rp_bucket", "decoder.image_position_idx"):
        assert sd[key].dtype == torch.int64


def test_frozen_bn_layout():
    cfg = ofa_config("ofa_tiny")
    cfg.frozen_bn = True
    model = _meta_model(cfg)
    sd = model.state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    assert "encoder.embed_images.layer1.0.downsample.1.running_mean" in sd
    # BN weight/bias become buffers, so they leave the parameter count.
    trunk_bn_affine = sum(v.numel() for k, v in sd.items() if "embed_images" in k and "bn" in k)
    assert trunk_bn_affine > 0
    assert not any("embed_images" in n and "bn" in n for n, _ in model.named_parameters())


# ---------------------------------------------------------------------------------------------------------
# Buckets and position ids (spec §3.2, §3.6, §4.6)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_buckets() -> torch.Tensor:
    return token_bucket_table(256, 1024)


@pytest.mark.parametrize(
    ("rel", "bucket"),
    [(0, 255), (1, 256), (127, 382), (128, 383), (129, 384), (130, 384), (200, 411), (500, 467), (1023, 510)],
)
def test_text_bucket_examples(text_buckets, rel, bucket):
    # rel = query − key; the table is antisymmetric around 255.
    assert text_buckets[rel, 0].item() == bucket
    assert text_buckets[1023, 1023 - rel].item() == bucket
    assert text_buckets[0, rel].item() == 510 - bucket


def test_text_bucket_table_properties(text_buckets):
    assert text_buckets.shape == (1024, 1024) and text_buckets.dtype == torch.int64
    assert text_buckets.min().item() == 0 and text_buckets.max().item() == 510
    # Depends on i − j only (Toeplitz).
    assert torch.equal(text_buckets[1:, 1:], text_buckets[:-1, :-1])
    # Float32 evaluation, as in the original, gives the same table (spec §3.6).
    rel = torch.arange(129, 1024, dtype=torch.float32)
    ratio = torch.log(rel / 128) / torch.log(torch.tensor(1023 / 128, dtype=torch.float32))
    far32 = (128 + torch.ceil(ratio * 127)).long() + 255
    assert torch.equal(text_buckets[129:, 0], far32)


@pytest.fixture(scope="module")
def image_buckets() -> torch.Tensor:
    return image_bucket_table(42)


def _pid(r: int, c: int) -> int:
    return r * 42 + c + 1


def test_image_bucket_examples(image_buckets):
    assert image_buckets.shape == (1765, 1765) and image_buckets.dtype == torch.int64
    assert image_buckets[_pid(5, 7), _pid(5, 7)].item() == 3444  # same patch
    assert image_buckets[_pid(5, 7), _pid(5, 8)].item() == 3443  # key one column to the right
    assert image_buckets[_pid(6, 7), _pid(5, 7)].item() == 3527  # query one row below
    assert image_buckets[_pid(0, 0), _pid(41, 41)].item() == 0
    assert image_buckets[_pid(41, 41), _pid(0, 0)].item() == 6888
    # cls-token specials: row 0 → 6889, column 0 → 6890, cell [0, 0] → 6891
    assert image_buckets[0, 0].item() == 6891
    assert torch.all(image_buckets[0, 1:] == 6889) and torch.all(image_buckets[1:, 0] == 6890)
    assert image_buckets[1:, 1:].max().item() == 6888


def test_image_position_ids_and_code_index():
    assert image_position_ids(2, 3).tolist() == [1, 2, 3, 43, 44, 45]
    with pytest.raises(ValueError, match="exceeds"):
        image_position_ids(43, 1)
    idx = image_position_index(128, 42, 1026)
    assert idx.shape == (1026,) and idx.dtype == torch.int64
    assert idx[0].item() == 0 and idx[1:257].tolist() == [_pid(r, c) for r in range(16) for c in range(16)]
    assert torch.all(idx[257:] == 1024) and idx[257:].numel() == 769


# ---------------------------------------------------------------------------------------------------------
# Behaviour of a tiny random model
# ---------------------------------------------------------------------------------------------------------

TINY = RefConfig(
    embed_dim=32,
    ffn_dim=64,
    encoder_layers=2,
    decoder_layers=2,
    heads=2,
    vocab_size=300,
    resnet_layers=(1, 1, 1),
    resnet_width=8,
)


@pytest.fixture(scope="module")
def tiny() -> OFAReference:
    model = OFAReference(TINY)
    randomize_(model, seed=0)
    return model.eval()


def _batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 300, (2, 8), generator=gen)
    src[:, 0] = 0  # BOS
    src[0, 4], src[0, 5:] = 2, PAD_ID  # sample 0: 5 real tokens, then 3 pads
    src[1, 7] = 2
    images = torch.randn(2, 3, 64, 64, generator=gen)
    prev = torch.randint(4, 300, (2, 6), generator=gen)
    prev[:, 0] = 0
    return src, images, torch.tensor([True, True]), prev


def test_tiny_forward_shapes(tiny):
    src, images, masks, prev = _batch()
    with torch.no_grad():
        enc = tiny.encode(src, images, masks)
        logits = tiny(src, images, masks, prev)
        features = tiny.resnet_features(images)
    assert features.shape == (2, 128, 4, 4)
    assert enc["encoder_out"].shape == (2, 16 + 8, 32)
    assert enc["position_embeddings"].shape == (2, 24, 32)
    assert enc["padding_mask"].tolist() == [[False] * 16 + [False] * 5 + [True] * 3, [False] * 24]
    assert logits.shape == (2, 6, 300) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, tiny.decode(prev, enc).detach())


def test_resnet_grid_rounds_up():
    # Each stride-2 step maps n ↦ ⌈n/2⌉ (§3.1): 65 px → 33 → 17 → 17 → 9 → 5.
    model = OFAReference(TINY).eval()
    with torch.no_grad():
        assert model.resnet_features(torch.zeros(1, 3, 65, 48)).shape == (1, 128, 5, 3)


def test_position_embeddings_follow_the_spec_layout(tiny):
    # E = [image_pos_ln(rows r·42+c+1) ; pos_ln(rows 0..L−1)] (§3.2, §3.5)
    src, images, masks, _ = _batch()
    enc_mod = tiny.encoder
    with torch.no_grad():
        pos = tiny.encode(src, images, masks)["position_embeddings"]
        image_rows = [_pid(r, c) for r in range(4) for c in range(4)]
        expected_image = enc_mod.image_pos_ln(enc_mod.embed_image_positions.weight[image_rows])
        expected_text = enc_mod.pos_ln(enc_mod.embed_positions.weight[:8])
    torch.testing.assert_close(pos[1, :16], expected_image)
    torch.testing.assert_close(pos[0, 16:], expected_text)


def test_decoder_is_causal(tiny):
    src, images, masks, prev = _batch()
    changed = prev.clone()
    changed[:, 4:] = torch.tensor([[7, 8], [9, 10]])
    with torch.no_grad():
        enc = tiny.encode(src, images, masks)
        a, b = tiny.decode(prev, enc), tiny.decode(changed, enc)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-6)
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


def test_source_padding_is_masked(tiny):
    # A padded sample in a batch gives the same logits as the same sample alone without pads.
    src, images, masks, prev = _batch()
    with torch.no_grad():
        batched = tiny(src, images, masks, prev)[0]
        alone = tiny(src[:1, :5], images[:1], masks[:1], prev[:1])[0]
        more_pads = torch.cat([src[:1, :5], torch.full((1, 9), PAD_ID)], dim=1)
        repadded = tiny(more_pads, images[:1], masks[:1], prev[:1])[0]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(repadded, alone, rtol=1e-5, atol=1e-5)


def test_missing_image_is_masked(tiny):
    src, images, _, prev = _batch()
    no_image = torch.tensor([False, True])
    other = images.clone()
    other[0] = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        enc = tiny.encode(src, images, no_image)
        a = tiny.decode(prev, enc)
        b = tiny(src, other, no_image, prev)
        with_image = tiny(src, images, torch.tensor([True, True]), prev)
    assert enc["padding_mask"][0, :16].all() and not enc["padding_mask"][1, :16].any()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a[0] - with_image[0]).abs().max() > 1e-3
    torch.testing.assert_close(a[1], with_image[1], rtol=1e-5, atol=1e-5)


def test_entangle_quirk_changes_the_decoder():
    # disable_entangle=False adds raw position rows to the decoder input (§4.1); True (OFA/IMT-CXR) does not.
    src, images, masks, prev = _batch()
    entangled_cfg = RefConfig(**{**TINY.__dict__, "disable_entangle": False})
    plain, entangled = OFAReference(TINY).eval(), OFAReference(entangled_cfg).eval()
    randomize_(plain, seed=3)
    entangled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        enc = plain.encode(src, images, masks)
        a, b = plain.decode(prev, enc), entangled.decode(prev, enc)
    assert (a - b).abs().max() > 1e-3


def test_randomize_is_deterministic_and_touches_every_tensor():
    a, b, c = OFAReference(TINY), OFAReference(TINY), OFAReference(TINY)
    randomize_(a, seed=7)
    randomize_(b, seed=7)
    randomize_(c, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key
        if value.is_floating_point() and not key.endswith("version"):
            assert not torch.equal(value, sc[key]), key
            assert value.numel() == 1 or value.std() > 0, key  # no constant tensor left from construction
    assert sa["encoder.version"].tolist() == [3.0]
    assert torch.equal(sa["encoder.token_rp_bucket"], token_bucket_table())
    assert torch.equal(sa["decoder.image_rp_bucket"], image_bucket_table())
    assert count_unique_parameters(a) == sum(p.numel() for p in a.parameters())
