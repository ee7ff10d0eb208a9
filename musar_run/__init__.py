"""Headless tools around real ComfyUI: runtime bootstrap, workflow conversion, the runner CLI."""
