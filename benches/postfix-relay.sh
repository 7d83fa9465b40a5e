# Sourced by scenarios/postfix.sh and benches/peers.sh: Postfix as a relay, self-contained
# under a directory of its own (its config, queue and log; the system's Postfix is not
# touched), and the small helpers both scripts share.
#
#   need_packages postfix haproxy      # installs what is missing (Debian, as root)
#   postfix_relay DIR PORT RELAYHOST_PORT [MAIN_CF_LINES]
#                                      # writes DIR/conf, starts Postfix (start-fg, its log in
#                                      # DIR/maillog) on 127.0.0.1:PORT relaying to
#                                      # [127.0.0.1]:RELAYHOST_PORT; mynetworks 127.0.0.0/8
#   postfix_relay_stop DIR
#   wait_port PORT                     # until something listens on 127.0.0.1:PORT (10 s)
#   relay_toml NAME PORT SPOOL UPSTREAM_PORT [LIMITS]
#                                      # an smtp-relay configuration for load runs

need_packages() {
  local missing=()
  for p in "$@"; do
    # smtp-source comes with the postfix package.
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || missing+=("${p/smtp-source/postfix}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "installing ${missing[*]}..." >&2
  apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# relay_toml NAME PORT SPOOL UPSTREAM_PORT [LIMITS]: an smtp-relay configuration on standard
# output: hostname NAME, listening on 127.0.0.1:PORT, no AUTH for 127.0.0.0/8, the session
# caps raised for load (and the LIMITS lines), the upstream 127.0.0.1:UPSTREAM_PORT in plain
# SMTP.
relay_toml() {
  cat <<TOML
hostname = "$1"
listen = "127.0.0.1:$2"
spool_dir = "$3"
[auth]
mode = "none"
trusted_networks = ["127.0.0.0/8"]
[limits]
max_sessions = 20000
max_sessions_per_ip = 20000
${5:+$5
}[upstream]
host = "127.0.0.1"
port = $4
tls = "none"
TOML
}

postfix_relay() {
  local dir=$1 port=$2 relayhost=$3 extra=${4:-}
  if [ "$(id -u)" != 0 ]; then
    echo "Postfix's master must start as root" >&2
    return 2
  fi
  mkdir -p "$dir/conf" "$dir/queue" "$dir/data"
  chmod 755 "$dir"
  chown postfix:postfix "$dir/data"
  cat >"$dir/conf/main.cf" <<MAIN
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.relay.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$relayhost
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
# Leave the messages of 127.0.0.1 as they are (no Message-ID, Date or From added).
local_header_rewrite_clients =
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Logs go to the standard output of start-fg, into $dir/maillog.
maillog_file = /dev/stdout
$extra
MAIN
  cat >"$dir/conf/master.cf" <<MASTER
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
MASTER
  /usr/sbin/postfix -c "$dir/conf" start-fg >"$dir/maillog" 2>&1 &
  if ! wait_port "$port"; then
    echo "Postfix did not start; its log:" >&2
    cat "$dir/maillog" >&2
    return 2
  fi
}

postfix_relay_stop() {
  /usr/sbin/postfix -c "$1/conf" stop >/dev/null 2>&1 || true
  sleep 0.5
}
