"""The learning agent: the Keras Q-network, its RLlib module, learner and replay, and the one DQNConfig.

Modules are imported directly (``rllib_rec.agent.model`` ...): this package's import stays free of torch,
Keras and Ray, so the TensorFlow-backend export child can import ``rllib_rec.agent.model`` alone.
"""
