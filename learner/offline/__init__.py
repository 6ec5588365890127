"""Offline GPO (`gpo offline pairs|train`): critical-step preference pairs from a policy's
own trajectories (`pairs.py`) and preference training of a LoRA adapter on them with TRL
(`train.py`); `cli.py` is the command."""
