#!/bin/sh
eval "$(cat)"
exec sleep "$seconds"
