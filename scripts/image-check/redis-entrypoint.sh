#!/bin/sh
# Stand-in for the official redis image's entrypoint (verification only): a first argument that
# is an option means `redis-server <options>`; without a config file protected mode is off, as
# in the official image; it runs as the `redis` user in /data.
set -eu
if [ "$(id -u)" = 0 ]; then
  echo "redis stand-in: refusing to run as root" >&2
  exit 1
fi
case "${1:-}" in
  -*) set -- redis-server "$@" ;;
  "") set -- redis-server ;;
esac
if [ "$1" = redis-server ]; then
  case "${2:-}" in
    *.conf) ;;
    *) shift; set -- redis-server --protected-mode no "$@" ;;
  esac
fi
exec "$@"
