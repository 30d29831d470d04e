"""The torch-free base every layer may use: how a command ends a fault (``cli``), the offline environment
(``offline``), atomic writes (``atomic``) and terminal tables folded to the console (``tables``). It imports
nothing of the project."""
