"""Ray reads part of its environment when it is imported: set its defaults before any
test module (or another conftest) imports it."""

from rabbit_serve.local_cluster import apply_ray_env_defaults

apply_ray_env_defaults()
