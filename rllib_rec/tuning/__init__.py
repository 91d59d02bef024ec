"""Hyperparameter sweeps with Ray Tune over the one DQNConfig of ``rllib_rec.agent.algo``."""
