"""Label-smoothed cross-entropy, negative log-likelihood and accuracy against NumPy."""


import numpy as np

from transformer import losses


def test_label_smoothed_cross_entropy_matches_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 7).astype(np.float32)
  targets = rng.randint(0, 7, (2, 3))
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  smoothing = 0.1
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  soft = np.full((2, 3, 7), smoothing / 6)
  for b in range(2):
    for t in range(3):
      soft[b, t, targets[b, t]] = 1 - smoothing
  entropy = -(soft * np.log(soft)).sum(-1)
  expected = ((-(soft * log_probs).sum(-1) - entropy) * weights).sum()
  loss_sum, weight_sum = losses.label_smoothed_cross_entropy(logits, targets, weights, smoothing)
  np.testing.assert_allclose(loss_sum, expected, rtol=1e-5)
  assert float(weight_sum) == 3.0
  nll, _ = losses.cross_entropy(logits, targets, weights)
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, -(picked * weights).sum(), rtol=1e-5)
  correct, _ = losses.accuracy(logits, targets, weights)
  assert float(correct) == ((logits.argmax(-1) == targets) * weights).sum()
