"""Configuration plumbing: where the Hydra config tree lives, composing it, resolvers and the precision rule."""
