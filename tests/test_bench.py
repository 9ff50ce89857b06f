"""The timing function with several test images per call: episodic methods batch them, online ones cannot."""

from mintclip.bench import format_table, time_method


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
