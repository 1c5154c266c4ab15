"""The committed lab models: offline loading, tokenizer ids, prompt adherence, memorization; trainer resume."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from steer.lab import data as D
from steer.lab import memorization as MEM
from steer.lab.classifier import adherence, load_classifier, predict

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "models" / "demo"
HYBRID = ROOT / "assets" / "models" / "demo-hybrid"
DEMO_4X = ROOT / "assets" / "models" / "demo-4x"  # ~4x the demo UNet, same data (issue 12's "model or method?")
CLASSIFIER = ROOT / "assets" / "classifier"

# floors measured with tests' settings (24 prompts, 12 DDIM steps, guidance 5) are in the model card; these are
# set below them so that the test fails when the model stops following prompts, not on sampling noise
DEMO_COLOUR_FLOOR = 0.75
DEMO_CLASS_FLOOR = 0.7


@pytest.fixture(scope="module")
def offline():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _load(path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), torch_dtype=torch.float32, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def demo(offline):
    return _load(DEMO)


@pytest.fixture(scope="module")
def hybrid(offline):
    return _load(HYBRID)


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@pytest.mark.parametrize("path", [DEMO, HYBRID, DEMO_4X], ids=["demo", "hybrid", "demo-4x"])
def test_model_folders_are_small_fp16_diffusers_pipelines(path):
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert _dir_mb(path) <= 30
    for sub in ("unet", "vae", "text_encoder"):
        files = list((path / sub).glob("*.safetensors"))
        assert files, sub
        with safe_open(str(files[0]), "pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert dtypes == {torch.float16}, (sub, dtypes)
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt"))


def test_demo_loads_offline_with_real_clip_tokenizer(demo):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(demo.unet, UNet2DConditionModel) and isinstance(demo.vae, AutoencoderKL)
    assert isinstance(demo.text_encoder, CLIPTextModel) and isinstance(demo.tokenizer, CLIPTokenizer)
    assert isinstance(demo.scheduler, DDIMScheduler)
    assert demo.unet.dtype == torch.float32
    assert len(demo.tokenizer) == 49408
    assert demo.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = demo.tokenizer("a red sneaker", padding="max_length", max_length=demo.tokenizer.model_max_length).input_ids
    assert len(ids) == demo.tokenizer.model_max_length == demo.text_encoder.config.max_position_embeddings
    assert ids[0] == 49406 and ids[1] == 320 and ids[-1] == 49407
    assert demo.text_encoder.config.vocab_size == 49408
    # standard diffusers block layout: the steering hook sites exist
    names = dict(demo.unet.named_modules())
    for n in ("up_blocks.0.resnets.1.nonlinearity", "up_blocks.1.resnets.0", "up_blocks.2.resnets.1", "up_blocks.1.attentions.0",
              "down_blocks.0.attentions.0", "mid_block.attentions.0"):
        assert n in names, n
    assert demo.unet.config.cross_attention_dim == demo.text_encoder.config.hidden_size
    assert abs(demo.vae.config.scaling_factor - 1.0) > 1e-6  # measured, not the default


def test_classifier_reads_class_and_colour_of_real_test_images():
    clf = load_classifier(CLASSIFIER)
    test = D.make_coloured_fashion_mnist("test", seed=5, limit=1000)
    pc, pk = predict(clf, test.images)
    assert np.mean(pc == test.classes) > 0.8
    assert np.mean(pk == test.colours) > 0.95


def test_demo_follows_colour_and_class_prompts(demo):
    res = adherence(demo, n=24, seed=1, steps=12, guidance=5.0, classifier=load_classifier(CLASSIFIER))
    assert res["colour_adherence"] >= DEMO_COLOUR_FLOOR, res
    assert res["class_adherence"] >= DEMO_CLASS_FLOOR, res


def test_demo_4x_is_the_wider_unet_on_the_same_vae_and_follows_prompts(demo, offline):
    """The larger variant: the same VAE and scheduler as the demo model, a UNet of ~4x the parameters, prompt
    adherence at least at the demo model's floors."""
    from steer.lab.models import count_params

    big = _load(DEMO_4X)
    assert tuple(big.unet.config.block_out_channels) == (64, 128, 128)
    assert 3.5 < count_params(big.unet) / count_params(demo.unet) < 4.5
    assert all(torch.equal(a, b) for a, b in zip(big.vae.state_dict().values(), demo.vae.state_dict().values(), strict=True))
    assert big.vae.config.scaling_factor == demo.vae.config.scaling_factor
    res = adherence(big, n=24, seed=1, steps=12, guidance=5.0, classifier=load_classifier(CLASSIFIER))
    assert res["colour_adherence"] >= DEMO_COLOUR_FLOOR, res
    assert res["class_adherence"] >= DEMO_CLASS_FLOOR, res


def test_demo_is_seeded_and_reproducible(demo):
    from steer.lab.models import sample

    a = sample(demo, ["a green trouser", "a blue bag"], seed=3, steps=5)
    b = sample(demo, ["a green trouser", "a blue bag"], seed=3, steps=5)
    assert np.array_equal(a, b)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1 and a.std() > 0.02


def test_hybrid_memorized_prompts_reproduce_their_training_images(hybrid):
    from steer.lab.models import sample

    prompts = (HYBRID / "memorized_prompts.txt").read_text().splitlines()
    info = json.loads((HYBRID / "memorized_images.json").read_text())
    assert len(prompts) == 50 and len(info["indices"]) == len(prompts) and info["captions"] == prompts
    train = D.make_coloured_fashion_mnist("train", seed=info["data_seed"])
    pick = list(range(6))
    ordinary = (HYBRID / "ordinary_prompts.txt").read_text().splitlines()[:6]
    imgs = sample(hybrid, [prompts[i] for i in pick] + ordinary, seed=0, steps=25, guidance=5.0)
    ratios, nns = MEM.nn_ratio(imgs, train.images)
    ratio, nn, r2 = ratios[:6], nns[:6], ratios[6:]
    # the nearest of the 60,000 training images is the duplicated one, and a copy by Gu et al.'s 1/3 criterion
    # (measured: 100 % of 100 samples, median 0.164; here 6/6 at ratios 0.15-0.22)
    assert np.sum(nn == np.asarray(info["indices"])[pick]) >= 5, (nn, ratio)
    assert np.sum(ratio < MEM.RATIO_THRESHOLD) >= 5 and np.median(ratio) < 0.25, ratio
    # ordinary prompts of the same model do not copy training images
    assert np.all(r2 > MEM.RATIO_THRESHOLD) and np.median(r2) > 0.8, r2
    assert np.median(r2) - np.median(ratio) > 0.2


def test_training_resumes_exactly(tmp_path):
    from steer.lab.export import export
    from steer.lab.train import main

    common = ["--variant", "demo", "--limit", "96", "--vae-steps", "2", "--batch-size", "4", "--threads", "1",
              "--checkpoint-minutes", "0"]
    main(common + ["--out", str(tmp_path / "a"), "--steps", "4"])
    main(common + ["--out", str(tmp_path / "b"), "--steps", "4", "--until", "2"])
    main(common + ["--out", str(tmp_path / "b"), "--steps", "4", "--resume"])
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    # the VAE stage is seeded too, so both runs see the same latents; resumed weights are identical
    for k in a:
        if k.startswith(("unet.", "ema.", "text_encoder.")):
            assert torch.equal(a[k], b[k]), k
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 4
    # a new run into a finished one's folder (without --resume) reused its VAE and latents and replaced its weights
    before = (tmp_path / "a" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(SystemExit, match=r"holds an earlier run \(checkpoint.safetensors, vae, latents.safetensors\): pass --resume"):
        main(common + ["--out", str(tmp_path / "a"), "--steps", "2", "--seed", "5"])
    assert (tmp_path / "a" / "checkpoint.safetensors").read_bytes() == before
    for variant, least in (("hybrid", 600), ("mem", 32)):  # numpy's "larger sample than population" mid-run before
        with pytest.raises(SystemExit, match=f"--variant {variant} needs --limit of at least {least} training items, got 10"):
            main([*common[2:], "--variant", variant, "--limit", "10", "--out", str(tmp_path / variant)])
        assert not (tmp_path / variant).exists()
    pipe = export(tmp_path / "b", tmp_path / "pipe")
    assert (tmp_path / "pipe" / "model_index.json").is_file() and pipe.name == "pipe"
    (pipe / "directions").mkdir()  # directions shipped for the model survive a re-export
    (pipe / "directions" / "to_x.safetensors").write_bytes(b"kept")
    export(tmp_path / "b", tmp_path / "pipe")
    assert (pipe / "directions" / "to_x.safetensors").read_bytes() == b"kept"
    # an export replaced its folder whole: a file of the user's in it, another folder, or the run itself were deleted
    (pipe / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"holds files an export does not write \(notes.txt\): move them away first"):
        export(tmp_path / "b", pipe)
    assert (pipe / "notes.txt").read_text() == "mine" and (pipe / "model_index.json").is_file()
    with pytest.raises(SystemExit, match="would replace the run folder"):
        main(["--stage", "export", "--out", str(tmp_path / "b"), "--export", str(tmp_path / "b")])
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "results.csv").write_text("x")
    with pytest.raises(SystemExit, match="is not a pipeline folder"):  # refused before any training too
        main(common + ["--out", str(tmp_path / "c"), "--steps", "2", "--export", str(tmp_path / "thesis")])
    assert (tmp_path / "thesis" / "results.csv").read_text() == "x" and not (tmp_path / "c").exists()


def test_decoder_stage_continues_a_pipeline_and_replaces_only_its_decoder(tmp_path):
    """``--stage decoder --init PIPELINE`` fine-tunes the decoder of an exported pipeline (with latent-noise
    augmentation, half of each batch from its memorized items); ``--stage export`` writes that pipeline with only the
    decoder changed and records the stage in training.json."""
    from safetensors.torch import load_file

    from steer.lab.train import main

    main(["--variant", "demo", "--limit", "96", "--vae-steps", "2", "--batch-size", "4", "--threads", "1",
          "--out", str(tmp_path / "run"), "--steps", "2", "--device", "cpu"])
    src = tmp_path / "run" / "pipeline"
    (src / "memorized_images.json").write_text(json.dumps({"data_seed": 0, "indices": [3, 5], "captions": ["a", "b"]}))
    dec = ["--stage", "decoder", "--out", str(tmp_path / "dec"), "--init", str(src), "--limit", "96", "--batch-size", "4",
           "--decoder-steps", "3", "--decoder-latent-noise", "2", "--threads", "1", "--device", "cpu"]
    main(dec)
    assert json.loads((tmp_path / "dec" / "variant.json").read_text())["memorized_indices"] == [3, 5]
    main(["--stage", "export", "--out", str(tmp_path / "dec"), "--export", str(tmp_path / "new")])
    new = tmp_path / "new"
    for f in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "memorized_images.json"):
        assert (new / f).read_bytes() == (src / f).read_bytes(), f
    a = load_file(str(src / "vae" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(new / "vae" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    stage = json.loads((new / "training.json").read_text())["decoder_finetunes"][-1]
    assert stage["steps"] == 3 and stage["args"]["decoder_latent_noise"] == 2.0
    # exported again into the same folder: what it copied from the starting pipeline is its own (it was refused)
    (src / "memorized.png").write_bytes(b"a sample grid")
    (src / "notes.txt").write_text("the starting pipeline's own file")  # copied whole: the export's own on a rerun
    main(["--stage", "export", "--out", str(tmp_path / "dec"), "--export", str(tmp_path / "new2")])
    main(["--stage", "export", "--out", str(tmp_path / "dec"), "--export", str(tmp_path / "new2")])
    assert (tmp_path / "new2" / "memorized.png").read_bytes() == b"a sample grid"
    # memorized indices of another data seed would point at other images: refused, naming both seeds
    (src / "memorized_images.json").write_text(json.dumps({"data_seed": 1, "indices": [3], "captions": ["a"]}))
    with pytest.raises(SystemExit, match="data seed 1.*--seed 0"):
        main([*dec[:3], str(tmp_path / "dec2"), *dec[4:]])
    with pytest.raises(SystemExit, match="no vae/.*--init PIPELINE"):  # nothing to continue from
        main(["--stage", "decoder", "--out", str(tmp_path / "empty"), "--threads", "1"])


def test_hybrid_inline_cfg_distance_flags_memorized_prompts(offline):
    """The bundled detector's inline score (CFG distance, docs/detection.md) separates the hybrid's memorized prompts
    from ordinary ones on fresh samples, at no extra UNet evaluation (measured: 5.5-7.5 vs 1.1-2.5 at 25 steps;
    the 1 % FPR threshold 2.44 came from other seeds and flags one of these six ordinary samples, at 2.50)."""
    from steer.assets import ASSETS
    from steer.cli.loading import load_pipeline
    from steer.detect.detector import MemorizationDetector

    pipe = load_pipeline(str(HYBRID), "cpu")
    det = MemorizationDetector.load(ASSETS / "detectors" / "demo-hybrid.safetensors", pipe)  # fingerprint-checked
    assert det.inline_score == "cfg_distance" and det.inline_threshold is not None
    memorized = (HYBRID / "memorized_prompts.txt").read_text().splitlines()[:6]
    ordinary = (HYBRID / "ordinary_prompts.txt").read_text().splitlines()[::13][:6]
    out = pipe(memorized + ordinary, generator=[torch.Generator().manual_seed(i) for i in range(12)],
               num_inference_steps=25, guidance_scale=5.0, memorization_detector=det, output_type="np")
    s = out.memorization_scores
    assert s[:6].min() > 1.5 * s[6:].max(), s
    assert out.memorized[:6].all() and out.memorized[6:].sum() <= 1, (s, det.inline_threshold)


def test_time_budget_stops_training_with_a_checkpoint(tmp_path):
    """``--max-minutes`` fits the run to a wall-clock budget: out of time, it stops at the next step, records the
    steps it ran as the schedule's length, and still checkpoints and exports."""
    from steer.lab.schedule import TimeBudget
    from steer.lab.train import main

    main(["--variant", "demo", "--limit", "96", "--vae-steps", "2", "--batch-size", "4", "--threads", "1",
          "--out", str(tmp_path / "run"), "--steps", "500", "--max-minutes", "0.00001", "--device", "cpu"])
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert info["step"] <= 2 and info["args"]["steps"] == info["step"] and info["args"]["max_minutes"] == 0.00001
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()
    budget = TimeBudget(None)
    assert budget.steps_for(0, 100) is None  # no budget: the requested schedule stands


def test_unet_channels_train_and_export_a_wider_unet(tmp_path, capsys):
    """``--unet-channels`` (the larger demo variant) trains and exports a UNet of those widths; a bad value is a
    one-line usage error before any work."""
    from diffusers import UNet2DConditionModel

    from steer.lab.train import main

    main(["--variant", "demo", "--limit", "96", "--vae-steps", "2", "--batch-size", "4", "--threads", "1",
          "--out", str(tmp_path / "run"), "--steps", "3", "--until", "2", "--unet-channels", "48,96,96"])
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["args"]["unet_channels"] == [48, 96, 96]
    # a resumed run continues with the widths it was trained with; other widths are a one-line error
    resume = ["--variant", "demo", "--limit", "96", "--vae-steps", "2", "--batch-size", "4", "--threads", "1",
              "--out", str(tmp_path / "run"), "--resume"]
    main(resume)
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert info["step"] == 3 and info["args"]["unet_channels"] == [48, 96, 96]
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "pipeline" / "unet")
    assert tuple(unet.config.block_out_channels) == (48, 96, 96)
    with pytest.raises(SystemExit, match="does not match the run being resumed"):
        main(resume + ["--unet-channels", "64,128,128"])
    # a variant started from it (--init) builds the same widths
    main(["--variant", "mem", "--init", str(tmp_path / "run"), "--limit", "96", "--batch-size", "4", "--threads", "1",
          "--out", str(tmp_path / "mem"), "--steps", "1"])
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "mem" / "pipeline" / "unet")
    assert tuple(unet.config.block_out_channels) == (48, 96, 96)
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "bad"), "--unet-channels", "64,12,128"])
    assert e.value.code == 2 and "multiples of 16" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
