"""Your own tasks, pre-tasks and `_target_` classes: put their modules in this folder.

The `task` stage in dvc.yaml depends on this folder (and tracks every key of params.yaml), so
editing a module here, or a param a task binds, reruns the trials. Name them in params.yaml
by their dotted path from the project root, e.g. `task: tasks.mine.train`. Code elsewhere in
the project is refused until you add it to the stage's deps.
"""
