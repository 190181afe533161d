"""Integrations with other projects' commands (LeRobot); each module imports its project only when used."""
