"""The diffusers adapter on real schedulers and pipelines, offline, with a tiny UNet2DModel built in code."""

import inspect

import numpy as np
import pytest
import torch

import hallucfilter

diffusers = pytest.importorskip("diffusers")

NUM_STEPS, BATCH = 10, 4


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return model.eval()


def _vp_x0(sched, model_output, t, x):
    # Independent reference: epsilon prediction on a VP schedule, unclipped (Ho et al. 2020, Eq. 15).
    ab = sched.alphas_cumprod[int(t)].double()
    return ((x.double() - (1 - ab).sqrt() * model_output.double()) / ab.sqrt()).float()


def _own_x0(sched, model_output, t, x, output):
    return output[1]


# name -> (scheduler factory, reference x0_hat from the step's inputs/outputs)
SCHEDULERS = {
    "ddpm": (lambda: diffusers.DDPMScheduler(), lambda s, m, t, x, o: _vp_x0(s, m, t, x)),
    "ddim": (lambda: diffusers.DDIMScheduler(), lambda s, m, t, x, o: _vp_x0(s, m, t, x)),
    "euler": (lambda: diffusers.EulerDiscreteScheduler(), _own_x0),
    "euler_ancestral": (lambda: diffusers.EulerAncestralDiscreteScheduler(), _own_x0),
    "heun": (lambda: diffusers.HeunDiscreteScheduler(), _own_x0),
    "dpmsolver++": (lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"),
                    lambda s, m, t, x, o: _vp_x0(s, m, t, x)),
    "sde-dpmsolver++": (lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"),
                        lambda s, m, t, x, o: _vp_x0(s, m, t, x)),
    "dpmsolver_eps": (lambda: diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
                      lambda s, m, t, x, o: _vp_x0(s, m, t, x)),
    "unipc": (lambda: diffusers.UniPCMultistepScheduler(), lambda s, m, t, x, o: _vp_x0(s, m, t, x)),
    "flow_euler": (lambda: diffusers.FlowMatchEulerDiscreteScheduler(),
                   lambda s, m, t, x, o: x - (float(t) / 1000.0) * m),  # x0 = x - sigma v, sigma = t / 1000
}


def sample_loop(unet, sched, *, seed=0, steps=NUM_STEPS, begin=0, batch=BATCH, reference=None, callback=None):
    """A pipeline's denoising loop (as in diffusers' pipelines), optionally starting part-way (img2img).

    Returns the final sample and, with ``reference``, the reference x0_hat of each first-order step.
    """
    g = torch.Generator().manual_seed(seed)
    sched.set_timesteps(steps)
    order = getattr(sched, "order", 1)
    timesteps = sched.timesteps[begin * order:]
    if begin and hasattr(sched, "set_begin_index"):
        sched.set_begin_index(begin * order)
    x = torch.randn(batch, 3, 16, 16, generator=g) * getattr(sched, "init_noise_sigma", 1.0)
    accepted = set(inspect.signature(sched.step).parameters)  # what pipelines do (prepare_extra_step_kwargs)
    extra = {"generator": g} if "generator" in accepted else {}
    if "eta" in accepted:
        extra["eta"] = 0.5
    trajectory = []
    for i, t in enumerate(timesteps):
        inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        with torch.no_grad():
            model_output = unet(inp, t).sample
        first_order = getattr(sched, "state_in_first_order", True)
        out = sched.step(model_output, t, x, **extra, return_dict=False)
        if reference is not None and first_order:
            trajectory.append(reference(sched, model_output, t, x, out))
        x = out[0]
        if callback is not None:
            callback(type("Pipe", (), {"scheduler": sched, "num_timesteps": len(timesteps)})(), i, t, {"latents": x})
    return x, trajectory


@pytest.mark.filterwarnings("ignore:.*algorithm_type dpmsolver is deprecated:FutureWarning")
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_hook_is_bit_identical_and_scores_match_numpy_var(unet, name):
    factory, reference = SCHEDULERS[name]
    plain, trajectory = sample_loop(unet, factory(), seed=3, reference=reference)
    assert len(trajectory) == NUM_STEPS  # one x0_hat per step, also for Heun's two calls per step

    sched = factory()
    rec = hallucfilter.attach(sched, last_k=4)
    hooked, _ = sample_loop(unet, sched, seed=3)
    assert torch.equal(plain, hooked)  # bit-identical, seeded generator included
    assert rec.tracker.count == 4

    window = torch.stack(trajectory[-4:]).double().numpy()  # the last 4 steps, the output step included
    expected = np.var(window, axis=0).reshape(BATCH, -1).mean(axis=1)
    # float32 x0_hat: the scheduler's own value vs the float64 reference differ by rounding only.
    np.testing.assert_allclose(rec.scores().double().numpy(), expected, rtol=2e-4, atol=1e-7)
    rec.detach()


@pytest.mark.parametrize(("factory", "rtol"), [
    (lambda: diffusers.KDPM2DiscreteScheduler(), 1e-9),
    (lambda: diffusers.LMSDiscreteScheduler(), 1e-9),
    (lambda: diffusers.EDMEulerScheduler(), 1e-9),
    (lambda: diffusers.LCMScheduler(), 1e-9),
    (lambda: diffusers.DEISMultistepScheduler(), 2e-3),  # reference recomputed in float64: rounding only
], ids=["kdpm2", "lms", "edm_euler", "lcm", "deis"])
def test_more_schedulers_with_float64_accumulation(unet, factory, rtol):
    # With x0_hat of magnitude ~100 and variance ~1e-6 (a random UNet), float32 accumulation keeps ~1e-4 of
    # relative precision; float64 accumulation matches numpy.var on the scheduler's own x0_hat to rounding.
    deis = isinstance(factory(), diffusers.DEISMultistepScheduler)
    reference = (lambda s, m, t, x, o: _vp_x0(s, m, t, x)) if deis else _own_x0
    plain, trajectory = sample_loop(unet, factory(), seed=4, reference=reference)
    sched = factory()
    rec = hallucfilter.attach(sched, last_k=4, dtype=torch.float64)
    hooked, _ = sample_loop(unet, sched, seed=4)
    assert torch.equal(plain, hooked) and rec.tracker.count == 4 and len(trajectory) == NUM_STEPS
    expected = np.var(torch.stack(trajectory[-4:]).double().numpy(), axis=0).reshape(BATCH, -1).mean(axis=1)
    np.testing.assert_allclose(rec.scores().numpy(), expected, rtol=rtol)


@pytest.mark.parametrize("name", ["ddim", "euler_ancestral", "heun", "dpmsolver++"])
def test_signature_kept_and_detach_restores_exactly(unet, name):
    sched = SCHEDULERS[name][0]()
    before = dict(vars(sched))
    signatures = {m: inspect.signature(getattr(sched, m)) for m in ("step", "set_timesteps")}
    rec = hallucfilter.attach(sched, last_k=2)
    assert isinstance(sched, type(SCHEDULERS[name][0]()))
    for m, sig in signatures.items():
        assert inspect.signature(getattr(sched, m)) == sig
    sample_loop(unet, sched, steps=3)
    rec.detach()
    assert "step" not in vars(sched) and "set_timesteps" not in vars(sched)
    assert sched.step.__func__ is type(sched).step and sched.set_timesteps.__func__ is type(sched).set_timesteps
    assert set(vars(sched)) - {"_step_index", "_begin_index"} >= set(before) - {"_step_index", "_begin_index"}
    rec.detach()  # idempotent
    assert rec.tracker.count == 2  # results survive detaching


def test_detach_refuses_when_hooked_again_later():
    sched = diffusers.DDIMScheduler()
    first = hallucfilter.attach(sched, last_k=2)
    second = hallucfilter.attach(sched, last_k=3)
    with pytest.raises(RuntimeError, match="detach the later hook first"):
        first.detach()
    second.detach()
    first.detach()
    assert "step" not in vars(sched)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_resets_between_runs(unet, name):
    factory = SCHEDULERS[name][0]
    sched = factory()
    with hallucfilter.attach(sched, last_k=3) as rec:
        sample_loop(unet, sched, seed=1)
        first = rec.scores()
        sample_loop(unet, sched, seed=2)
        assert rec.tracker.count == 3
        second = rec.scores()
    fresh = factory()
    rec_fresh = hallucfilter.attach(fresh, last_k=3)
    sample_loop(unet, fresh, seed=2)
    assert torch.equal(second, rec_fresh.scores()) and not torch.equal(first, second)


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "unipc"])
def test_partial_schedule_window_by_position(unet, name):
    # img2img: set_timesteps(10), then run only the last 6 steps; last_k=3 is still the last 3 of the 10.
    factory, reference = SCHEDULERS[name]
    plain, trajectory = sample_loop(unet, factory(), begin=4, reference=reference)
    assert len(trajectory) == 6
    sched = factory()
    rec = hallucfilter.attach(sched, last_k=3)
    hooked, _ = sample_loop(unet, sched, begin=4)
    assert torch.equal(plain, hooked) and rec.tracker.count == 3
    expected = np.var(torch.stack(trajectory[-3:]).double().numpy(), axis=0).reshape(BATCH, -1).mean(axis=1)
    np.testing.assert_allclose(rec.scores().double().numpy(), expected, rtol=2e-4, atol=1e-7)
    # A window reaching before the partial run's start records only the steps that ran.
    sched = factory()
    rec = hallucfilter.attach(sched, last_k=8)
    sample_loop(unet, sched, begin=4)
    assert rec.tracker.count == 6


@pytest.mark.parametrize(("kind", "cut", "expected_count"), [
    ("timestep_below", 300, 3),  # DDIM leading spacing, 10 steps: t = 900, 800, ..., 0 -> 200, 100, 0
    # sqrt((1 - ab) / ab) of DDIM's default linear betas (1e-4 to 0.02), computed from alphas_cumprod:
    # 0.0100 at t = 0, 0.342 at t = 100, 0.724 at t = 200, 1.240 at t = 300.
    ("sigma_below", 0.5, 2),
    ("sigma_below", 1.0, 3),
])
def test_noise_level_window_on_ddim(unet, kind, cut, expected_count):
    sched = diffusers.DDIMScheduler()
    rec = hallucfilter.attach(sched, **{kind: cut})
    sample_loop(unet, sched)
    assert rec.tracker.count == expected_count


def test_real_ddpm_and_ddim_pipelines(unet):
    for pipe_cls, sched_cls, kwargs in [(diffusers.DDPMPipeline, diffusers.DDPMScheduler, {}),
                                        (diffusers.DDIMPipeline, diffusers.DDIMScheduler, {"eta": 1.0})]:
        pipe = pipe_cls(unet=unet, scheduler=sched_cls())
        pipe.set_progress_bar_config(disable=True)

        def run(seed, pipe=pipe, kwargs=kwargs):
            return pipe(batch_size=BATCH, num_inference_steps=NUM_STEPS, output_type="np",
                        generator=torch.Generator().manual_seed(seed), **kwargs).images

        plain = run(0)
        rec = hallucfilter.attach(pipe.scheduler, last_k=5)
        first = run(0)
        first_scores = rec.scores()
        run(1)
        assert rec.tracker.count == 5  # reset by set_timesteps at the second call
        rec.detach()
        assert np.array_equal(plain, first)
        assert first_scores.shape == (BATCH,) and torch.isfinite(first_scores).all()


def test_errors_window_too_long_and_scores_before_steps(unet):
    sched = diffusers.EulerDiscreteScheduler()
    rec = hallucfilter.attach(sched, last_k=20)
    with pytest.raises(RuntimeError, match="no step has been recorded"):
        rec.scores()
    with pytest.raises(ValueError, match="last_k=20 is longer than the schedule of num_steps=10"):
        sched.set_timesteps(10)
    rec.detach()
    sched.set_timesteps(5)  # a schedule left from an earlier run does not decide: the next set_timesteps does
    rec = hallucfilter.attach(sched, last_k=20)
    sched.set_timesteps(30)
    assert rec.num_steps == 30
    rec.detach()
    with pytest.raises(TypeError, match="must have step"):
        hallucfilter.attach(object())


def test_custom_x0_fn_and_nan_sample_scores_inf(unet):
    def x0_fn(sched, model_output, t, x, output):
        x0 = output[1].clone()
        x0[1] = float("nan")
        return x0

    sched = diffusers.EulerDiscreteScheduler()
    rec = hallucfilter.attach(sched, last_k=3, x0_fn=x0_fn)
    sample_loop(unet, sched)
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\]"):
        scores = rec.scores()
    assert scores[1] == float("inf") and torch.isfinite(scores[[0, 2, 3]]).all()


def test_ddim_clipping_is_undone(unet):
    # DDIM clips pred_original_sample to [-1, 1] by default; the hook records the unclipped x0_hat.
    sched = diffusers.DDIMScheduler(clip_sample=True)
    clipped = []
    rec = hallucfilter.attach(sched, last_k=10)
    sample_loop(unet, sched, reference=lambda s, m, t, x, o: o[1])
    sched2 = diffusers.DDIMScheduler(clip_sample=True)
    _, unclipped = sample_loop(unet, sched2, reference=lambda s, m, t, x, o: _vp_x0(s, m, t, x))
    _, clipped = sample_loop(unet, diffusers.DDIMScheduler(clip_sample=True), reference=lambda s, m, t, x, o: o[1])
    ref = np.var(torch.stack(unclipped).double().numpy(), axis=0).reshape(BATCH, -1).mean(axis=1)
    ref_clipped = np.var(torch.stack(clipped).double().numpy(), axis=0).reshape(BATCH, -1).mean(axis=1)
    np.testing.assert_allclose(rec.scores().double().numpy(), ref, rtol=2e-4)
    assert (np.abs(torch.stack(unclipped).numpy()) > 1).any()  # the clip is active in this window
    assert not np.allclose(ref, ref_clipped, rtol=1e-3)


# --- callbacks ------------------------------------------------------------------------------------------


def test_pipeline_callback_composes_with_multi_callbacks(unet):
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    seen = []

    class Spy(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            seen.append(step_index)
            return callback_kwargs

    cb = hallucfilter.trajectory_variance_callback(last_k=4)
    assert isinstance(cb, PipelineCallback) and cb.tensor_inputs == []
    multi = MultiPipelineCallbacks([cb, Spy()])
    assert multi.tensor_inputs == ["latents"]
    sched = diffusers.DPMSolverMultistepScheduler()
    plain, _ = sample_loop(unet, diffusers.DPMSolverMultistepScheduler(), seed=5)
    out, _ = sample_loop(unet, sched, seed=5, callback=multi)
    assert torch.equal(plain, out) and seen == list(range(NUM_STEPS))
    assert "step" not in vars(sched)  # detached after the last step

    ref_sched = diffusers.DPMSolverMultistepScheduler()
    rec = hallucfilter.attach(ref_sched, last_k=4)
    sample_loop(unet, ref_sched, seed=5)
    assert torch.equal(cb.scores(), rec.scores())

    with pytest.raises(ValueError, match="covers the run.s first step"):
        sample_loop(unet, diffusers.DDIMScheduler(), callback=hallucfilter.trajectory_variance_callback(last_k=10))


def test_kdiffusion_callback_in_an_euler_loop():
    # A k-diffusion style Euler sampler with the exact denoiser of N(0, s^2) data: D(x, sigma) = x s^2/(s^2+sigma^2).
    s = 0.7
    sigmas = torch.linspace(3.0, 0.0, 9, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64) * sigmas[0]
    cb = hallucfilter.KDiffusionCallback(last_k=3, num_steps=len(sigmas) - 1)
    by_sigma = hallucfilter.KDiffusionCallback(sigma_below=1.0)
    denoised_all = []
    for i in range(len(sigmas) - 1):
        denoised = x * s**2 / (s**2 + sigmas[i] ** 2)
        denoised_all.append(denoised)
        for callback in (cb, by_sigma):
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    traj = torch.stack(denoised_all).numpy()
    np.testing.assert_allclose(cb.scores().numpy(), np.var(traj[-3:], axis=0).mean(axis=(1, 2)), rtol=1e-12)
    inside = (sigmas[:-1] < 1.0).numpy()  # sigma = 0.75, 0.375
    np.testing.assert_allclose(by_sigma.scores().numpy(), np.var(traj[inside], axis=0).mean(axis=(1, 2)), rtol=1e-12)
    with pytest.raises(ValueError, match="needs num_steps"):
        hallucfilter.KDiffusionCallback(last_k=3)


# --- real pipelines that inspect the signature, and classifier-free guidance ----------------------------


def test_pipeline_that_inspects_step_signature_keeps_eta(unet):
    # LDMSuperResolutionPipeline passes eta only if inspect.signature(scheduler.step) has it; with eta=1 a
    # wrapper that hid the signature would change the samples. Its DDIM noise comes from the global RNG.
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
        LDMSuperResolutionPipeline,
    )

    torch.manual_seed(0)
    sr_unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=6, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()
    vq = diffusers.VQModel(block_out_channels=[16], down_block_types=["DownEncoderBlock2D"],
                           up_block_types=["UpDecoderBlock2D"], in_channels=3, out_channels=3, latent_channels=3,
                           layers_per_block=1, norm_num_groups=8, num_vq_embeddings=8).eval()
    pipe = LDMSuperResolutionPipeline(vqvae=vq, unet=sr_unet, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    low_res = torch.rand(BATCH, 3, 16, 16) * 2 - 1

    def run():
        torch.manual_seed(1)
        return pipe(image=low_res, num_inference_steps=NUM_STEPS, eta=1.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    plain = run()
    with hallucfilter.attach(pipe.scheduler, last_k=3) as rec:
        hooked = run()
    assert np.array_equal(plain, hooked) and rec.tracker.count == 3
    pipe.scheduler.step = lambda *a, **k: type(pipe.scheduler).step(pipe.scheduler, *a, **k)  # hides the signature
    assert not np.array_equal(plain, run())  # so this test can fail
    del pipe.scheduler.step


def test_dit_classifier_free_guidance_batch():
    # DiTPipeline steps the conditional and unconditional copies together (batch 2B, identical halves after
    # guidance); the recorder sees all 2B rows, and scores()[:B] are the images' scores.
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, num_embeds_ada_norm=1000, norm_num_groups=8,
    ).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=[16], down_block_types=["DownEncoderBlock2D"],
                                  up_block_types=["UpDecoderBlock2D"], in_channels=3, out_channels=3,
                                  latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=8).eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(class_labels=[1, 2, 3], num_inference_steps=NUM_STEPS, guidance_scale=4.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    plain = run()
    rec = hallucfilter.attach(pipe.scheduler, last_k=4)
    hooked = run()
    rec.detach()
    assert np.array_equal(plain, hooked)
    scores = rec.scores()
    assert scores.shape == (6,) and torch.equal(scores[:3], scores[3:]) and (scores > 0).all()


# --- recomputation where the scheduler clips, thresholds or stores epsilon --------------------------------


def _own_or_stored(sched, out):
    return sched.model_outputs[-1] if getattr(sched, "model_outputs", None) is not None else out[1]


@pytest.mark.parametrize(("hooked", "reference", "channels"), [
    (lambda: diffusers.DDPMScheduler(variance_type="learned_range"),
     lambda: diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False), 6),
    (lambda: diffusers.DDIMScheduler(clip_sample=True), lambda: diffusers.DDIMScheduler(clip_sample=False), 3),
    (lambda: diffusers.HeunDiscreteScheduler(clip_sample=True, clip_sample_range=0.5),
     lambda: diffusers.HeunDiscreteScheduler(), 3),
    (lambda: diffusers.DPMSolverMultistepScheduler(thresholding=True, sample_max_value=0.5),
     lambda: diffusers.DPMSolverMultistepScheduler(), 3),
    (lambda: diffusers.UniPCMultistepScheduler(predict_x0=False), lambda: diffusers.UniPCMultistepScheduler(), 3),
], ids=["ddpm-learned-clipped", "ddim-clipped", "heun-clipped", "dpm-thresholded", "unipc-epsilon"])
def test_unclipped_x0_is_recomputed(hooked, reference, channels):
    # Drive a hooked scheduler whose own x0_hat is clipped (or not a data prediction) and an unclipped
    # reference with the same (model_output, sample) at every call; the hook must record the reference's x0_hat.
    g = torch.Generator().manual_seed(0)
    sched, ref = hooked(), reference()
    rec = hallucfilter.attach(sched, last_k=NUM_STEPS)
    sched.set_timesteps(NUM_STEPS)
    ref.set_timesteps(NUM_STEPS)
    trajectory, own = [], []
    for t in sched.timesteps:
        x = torch.randn(BATCH, 3, 4, 4, generator=g) * 3
        model_output = torch.randn(BATCH, channels, 4, 4, generator=g)
        first_order = getattr(ref, "state_in_first_order", True)
        out_hooked = sched.step(model_output, t, x, return_dict=False)
        out = ref.step(model_output, t, x, return_dict=False)
        if first_order:
            trajectory.append(_own_or_stored(ref, out))
            own.append(_own_or_stored(sched, out_hooked))
    expected = np.var(torch.stack(trajectory).double().numpy(), axis=0).reshape(BATCH, -1).mean(axis=1)
    np.testing.assert_allclose(rec.scores().double().numpy(), expected, rtol=1e-4)
    assert not torch.allclose(torch.stack(own), torch.stack(trajectory))  # the scheduler's own value differs


# --- a real img2img pipeline with guidance and callback_on_step_end ---------------------------------------


@pytest.fixture(scope="module")
def kandinsky_img2img():
    # Kandinsky 2.2 img2img itself needs only torch; diffusers gates its package on transformers, so it is
    # imported from its module. Tiny components from configs, random weights.
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_img2img import KandinskyV22Img2ImgPipeline

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=32, encoder_hid_dim_type="image_proj", cross_attention_dim=32, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None,
    ).eval()
    movq = diffusers.VQModel(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4,
    ).eval()
    pipe = KandinskyV22Img2ImgPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(), movq=movq)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++"])
def test_real_img2img_pipeline_with_guidance_and_callbacks(kandinsky_img2img, scheduler):
    from diffusers.callbacks import MultiPipelineCallbacks
    from PIL import Image

    pipe = kandinsky_img2img
    pipe.scheduler = SCHEDULERS[scheduler][0]()
    image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    g = torch.Generator().manual_seed(1)
    embeds, negative = torch.randn(2, 32, generator=g), torch.randn(2, 32, generator=g)

    def run(**kwargs):  # strength 0.6: only the last 6 of the 10 steps run; guidance doubles the UNet batch
        return pipe(image=image, image_embeds=embeds, negative_image_embeds=negative, height=32, width=32,
                    num_inference_steps=NUM_STEPS, strength=0.6, guidance_scale=4.0, output_type="np",
                    generator=torch.Generator().manual_seed(0), **kwargs).images

    plain = run()
    with hallucfilter.attach(pipe.scheduler, last_k=3) as rec:
        hooked = run()
    assert np.array_equal(plain, hooked) and rec.tracker.count == 3 and rec.scores().shape == (2,)
    with hallucfilter.attach(pipe.scheduler, last_k=8) as rec_long:
        run()
    assert rec_long.tracker.count == 6  # the window reaches before strength's start: the 6 steps that ran

    cb = hallucfilter.trajectory_variance_callback(last_k=3)
    with_callback = run(callback_on_step_end=MultiPipelineCallbacks([cb]))
    assert np.array_equal(plain, with_callback) and "step" not in vars(pipe.scheduler)
    assert torch.equal(cb.scores(), rec.scores())
    with pytest.raises(ValueError, match="covers the run's first step"):  # the run starts at position 4 of 10
        run(callback_on_step_end=hallucfilter.trajectory_variance_callback(last_k=6))
    assert "step" not in vars(pipe.scheduler)
    run(callback_on_step_end=hallucfilter.trajectory_variance_callback(last_k=5))  # positions 5..9: fine
