"""A tiny online method for the engine's tests: its logits depend on every image seen before, like an
online memory, so a resume that restores the wrong state gives different records."""

import time

import torch
import torch.nn.functional as F

from mintclip.adapt.base import Method, MethodConfig, register
from mintclip.adapt.prompts import encode_class_prompts


@register
class RunningMeanMethod(Method):
    name = "online_toy"
    online = True
    n_views = 2
    Config = MethodConfig
    delay = 0.0  # seconds per image, so a test can kill the run part-way

    def setup(self, model, test_set):
        self.model = model
        self.text = encode_class_prompts(model, test_set.classnames, ["a photo of a {}."])
        if not hasattr(self, "memory"):
            self.memory, self.seen = torch.zeros(model.config.embed_dim), 0

    def predict(self, views):
        time.sleep(self.delay)
        with torch.no_grad():
            feature = F.normalize(self.model.encode_image(views[:1]).float(), dim=-1)[0]
        self.memory = (self.memory * self.seen + feature) / (self.seen + 1)
        self.seen += 1
        return 100 * (feature + 0.5 * self.memory) @ self.text.T

    def state_dict(self):
        return {"memory": self.memory.clone(), "seen": torch.tensor(self.seen)}

    def load_state_dict(self, state):
        self.memory, self.seen = state["memory"].clone(), int(state["seen"])
