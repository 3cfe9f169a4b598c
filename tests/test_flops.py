"""The CPU peak behind the logged MFU."""



from transformer import flops


def test_a_cpu_peak_measured_under_load_is_measured_again(monkeypatch):
  measurements = iter([3e9])
  monkeypatch.setattr(flops, "measured_cpu_peak_flops", lambda: next(measurements))
  # The step ran faster than the start-up peak: that peak was measured under load.
  assert flops.corrected_peak(1e9, 2e9, configured=0.0) == 3e9
  assert flops.corrected_peak(1e9, 0.5e9, configured=0.0) == 1e9  # plausible: kept
  assert flops.corrected_peak(1e9, 2e9, configured=1e9) == 1e9  # the user's number stands
  measurements = iter([0.8e9])  # a second measurement that is lower still is not taken
  assert flops.corrected_peak(1e9, 2e9, configured=0.0) == 1e9
