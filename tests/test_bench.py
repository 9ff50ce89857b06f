"""The timing function with several test images per call: episodic methods batch them, online ones cannot."""

from mintclip.bench import format_table, run_benchmark, time_method, work_ratio


def test_episodic_methods_time_a_batch_per_call_and_report_per_image():
    timing = time_method("tpt", "mintclip", "micro", classes=5, views=8, images=4, warmup=1, device="cpu",
                         precision="fp32", batch_images=2)
    assert timing.batch_images == 2 and timing.ms_per_image > 0
    assert abs(timing.images_per_s - 1000 / timing.ms_per_image) < 1e-9
    reference = time_method("tpt", "reference", "micro", classes=5, views=8, images=2, warmup=0, device="cpu",
                            precision="fp32", batch_images=2)  # reference_order: predict_batch's per-image loop
    assert reference.batch_images == 2
    assert "imgs/call" in format_table([timing, reference], "header")


def test_online_methods_take_one_image_per_call():
    timing = time_method("tda", "mintclip", "micro", classes=5, views=8, images=2, warmup=0, device="cpu",
                         precision="fp32", batch_images=4)
    assert timing.batch_images == 1 and timing.ms_per_image > 0


def test_the_breakdown_accounts_for_the_time_once_and_counts_the_work_each_path_does():
    """Each in its own process (the clock patches autograd and AdamW there). The micro ViT's view is 16
    patches + CLS = 17 tokens: TPT encodes its 8 views once, its reference order again at every step
    and view 0 to predict; TPT's text runs 77 tokens per class in the reference order only."""
    results = run_benchmark(["zeroshot", "tpt"], "micro", classes=5, views=8, images=2, warmup=1, device="cpu",
                            precision="fp32", breakdown=True)
    by_path = {(r.method, r.path): r for r in results}
    for r in results:
        total = r.ms_per_image + r.phases_ms["views"]
        assert r.phases_ms["rest"] >= -0.02 * total  # no phase counted twice (the rest is what they leave)
    zeroshot, tpt, reference = by_path["zeroshot", "mintclip"], by_path["tpt", "mintclip"], by_path["tpt", "reference"]
    assert zeroshot.tokens == {"image": 17, "text": 0} and zeroshot.phases_ms["backward"] == 0
    assert tpt.tokens["image"] == 8 * 17 and reference.tokens["image"] == (8 + 1) * 17
    assert reference.tokens["text"] == 5 * 77 * 2 > tpt.tokens["text"]  # one step's forward, the prediction's
    assert all(tpt.phases_ms[p] > 0 for p in ("views", "image forward", "text forward", "backward", "optimiser"))
    assert "image tokens" in format_table(results, "header") and all(work_ratio(r) >= 1.0 for r in results)
