"""The usage service's Lua scripts (loaded by `services.usage.scripts`)."""
