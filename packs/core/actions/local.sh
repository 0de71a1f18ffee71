#!/bin/sh
eval "$(cat)"
exec /bin/sh -c "$cmd"
