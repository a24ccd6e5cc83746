-- Wireshark dissector for smkd control messages (RFC 1949 secure CBT joins).
--
-- Install: copy this file into Wireshark's personal Lua plugins folder, which
-- "Help > About Wireshark > Folders" lists (on Linux usually
-- ~/.local/lib/wireshark/plugins/), then restart Wireshark or reload Lua
-- plugins with Ctrl+Shift+L. For a single run of tshark:
--
--     tshark -X lua_script:/path/to/smkd.lua -r capture.pcap -V
--
-- `smkd wireshark` prints where this file is installed with the package.
--
-- The dissector registers on UDP port 7777. To use another port, change
-- "Edit > Preferences > Protocols > SMKD > UDP port", or pass
-- `-o smkd.port:PORT` to tshark. The display filter prefix is `smkd`, so
-- `smkd.type == 2` selects join acks and `smkd.host_token.host == "h"` every
-- message that carries h's token.
--
-- The layout follows node/messages.py and node/documents.py: a CBTv1 control
-- header, then security TLVs (type: 1 byte, length: 2 bytes, value) in
-- increasing type order, with the SIGNATURE TLV last. Sealed bundles and
-- sealed ACLs are HPKE ciphertext and are shown as opaque bytes. Group data
-- (type 0xff, node/datapacket.py) has its own header and an encrypted body,
-- shown as opaque bytes too. A datagram that breaks the layout is marked
-- with the "Malformed" expert group, and the dissector never raises a Lua
-- error for it.

local smkd = Proto("smkd", "smkd secure CBT control")

local DEFAULT_PORT = 7777
local VERSION = 1
local FIXED_HEADER_SIZE = 28
local MAX_CORES = 16
local NONCE_SIZE = 16
local MAX_NAME_SIZE = 64

local MESSAGE_TYPES = {
    [1] = "JOIN-REQUEST",
    [2] = "JOIN-ACK",
    [3] = "JOIN-NACK",
    [4] = "QUIT-REQUEST",
    [5] = "QUIT-ACK",
    [6] = "FLUSH-TREE",
    [7] = "ECHO-REQUEST",
    [8] = "ECHO-REPLY",
    [0x10] = "MEMBERSHIP-REPORT",
    [0x11] = "KEY-DELIVERY",
    [0x12] = "ACL-UPLOAD",
    [0x13] = "ACL-ACCEPT",
    [0x14] = "REKEY",
    [0x15] = "SENDER-KEY-REQUEST",
    [0x16] = "SENDER-KEY-GRANT",
    [0x20] = "HELLO",
    [0x21] = "LINK-STATE",
}

-- the code byte has names for joins, join acks (CBTv1) and reports; every
-- other type takes code 0 only
local JOIN_CODES = { [0] = "ACTIVE-JOIN", [1] = "REJOIN", [2] = "REJOIN-LOOP-PROBE" }
local ACK_CODES = { [0] = "NORMAL", [1] = "PRIMARY-REJOIN", [2] = "PRIMARY-LOOP-PROBE" }
local REPORT_CODES = { [0] = "JOIN", [1] = "LEAVE", [2] = "REFRESH" }
local CODE_NAMES = { [1] = JOIN_CODES, [2] = ACK_CODES, [0x10] = REPORT_CODES }

local TLV_TYPES = {
    [1] = "TOKEN",
    [2] = "HOST_TOKEN",
    [3] = "ACL",
    [4] = "SEALED_ACL",
    [5] = "HOST_BUNDLE",
    [6] = "HOP_BUNDLE",
    [7] = "PATH",
    [8] = "REASON",
    [9] = "HELLO",
    [10] = "LSA",
    [0x10] = "HANDLE",
    [0x11] = "REKEY",
    [0x12] = "SENDER_REQUEST",
    [0x13] = "SENDER_GRANT",
    [0x14] = "HOST_PATH",
    [0x15] = "HOP_PATH",
    [0x16] = "BRANCH_WRAPS",
    [0xFF] = "SIGNATURE",
}
local SIGNATURE_TLV = 0xFF

local REASON_CODES = {
    [0] = "ACCEPTED",
    [1] = "NOT_ON_ACL",
    [2] = "NO_ACL",
    [3] = "AUTHENTICATION_FAILED",
    [4] = "NO_ROUTE",
    [5] = "OLDER_ACL",
    [6] = "INVALID_ACL",
    [7] = "LOOP",
}

-- the TLVs each message type carries: true for required, false for optional
local TREE_LAYOUT = { [1] = true }
local LAYOUTS = {
    [1] = { [1] = true, [2] = true, [7] = true },
    [2] = {
        [1] = true, [2] = true, [3] = true, [5] = false, [6] = false, [0x10] = false,
        [0x14] = false, [0x15] = false,
    },
    [3] = { [1] = true, [2] = true, [8] = true },
    [4] = TREE_LAYOUT, [5] = TREE_LAYOUT, [6] = TREE_LAYOUT, [7] = TREE_LAYOUT,
    [8] = TREE_LAYOUT,
    [0x10] = { [2] = true },
    [0x11] = {
        [1] = true, [2] = true, [3] = true, [5] = true, [0x10] = false, [0x14] = false,
    },
    [0x12] = { [1] = true, [3] = false, [4] = false },
    [0x13] = { [1] = true, [8] = true },
    [0x14] = { [1] = true, [0x11] = true, [0x16] = false },
    [0x15] = { [1] = true, [0x12] = true },
    [0x16] = { [1] = true, [8] = true, [0x13] = false },
    [0x20] = { [1] = true, [9] = true },
    [0x21] = { [1] = true, [10] = true },
}

local SUITES = {
    [1] = "default: Ed25519, DHKEM(X25519), AES-128-GCM",
    [2] = "pq: ML-DSA-65, ML-KEM-768+X25519, AES-128-GCM",
}

local ACL_MODES = { [1] = "include", [2] = "exclude" }
local REKEY_KINDS = { [1] = "scheduled", [2] = "eviction" }
local DATA_KINDS = { [0] = "data", [1] = "sender-key announcement" }
local DATA_TYPE = 0xFF
local DATA_FIXED_SIZE = 33
-- an LKH key wrap: two (node id, version) pairs and a sealed 16-byte key
local LKH_ENTRY_SIZE = 16 + 12 + 16 + 16

local pf = {
    version = ProtoField.uint8("smkd.version", "Version", base.DEC, nil, 0xF0),
    type = ProtoField.uint8("smkd.type", "Type", base.DEC, MESSAGE_TYPES),
    code = ProtoField.uint8("smkd.code", "Code", base.DEC),
    core_count = ProtoField.uint8("smkd.core_count", "Number of cores", base.DEC),
    header_length = ProtoField.uint16("smkd.header_length", "Header length", base.DEC),
    checksum = ProtoField.uint16("smkd.checksum", "Checksum", base.HEX),
    checksum_good = ProtoField.bool("smkd.checksum.good", "Checksum correct"),
    group = ProtoField.ipv4("smkd.group", "Group address"),
    group_mask = ProtoField.ipv4("smkd.group_mask", "Group mask"),
    origin = ProtoField.ipv4("smkd.origin", "Packet origin"),
    primary_core = ProtoField.ipv4("smkd.primary_core", "Primary core"),
    target_core = ProtoField.ipv4("smkd.target_core", "Target core"),
    core = ProtoField.ipv4("smkd.core", "Core"),

    tlv_type = ProtoField.uint8("smkd.tlv.type", "TLV type", base.HEX, TLV_TYPES),
    tlv_length = ProtoField.uint16("smkd.tlv.length", "TLV length", base.DEC),

    token_timestamp = ProtoField.uint64("smkd.token.timestamp", "Timestamp (ms)"),
    token_nonce = ProtoField.bytes("smkd.token.nonce", "Nonce"),
    token_sender = ProtoField.string("smkd.token.sender", "Sender"),
    token_recipient = ProtoField.string("smkd.token.recipient", "Recipient"),

    host_timestamp = ProtoField.uint64("smkd.host_token.timestamp", "Timestamp (ms)"),
    host_nonce = ProtoField.bytes("smkd.host_token.nonce", "Nonce"),
    host_name = ProtoField.string("smkd.host_token.host", "Host"),
    host_group = ProtoField.ipv4("smkd.host_token.group", "Group address"),
    host_suite = ProtoField.uint8("smkd.host_token.suite", "Crypto suite", base.DEC,
                                  SUITES),
    host_signature_length = ProtoField.uint16("smkd.host_token.signature_length",
                                              "Signature length", base.DEC),
    host_signature = ProtoField.bytes("smkd.host_token.signature", "Signature"),

    acl_body_length = ProtoField.uint16("smkd.acl.body_length", "ACL body length",
                                        base.DEC),
    acl_group = ProtoField.ipv4("smkd.acl.group", "Group address"),
    acl_serial = ProtoField.uint32("smkd.acl.serial", "Serial", base.DEC),
    acl_mode = ProtoField.uint8("smkd.acl.mode", "Mode", base.DEC, ACL_MODES),
    acl_not_before = ProtoField.uint64("smkd.acl.not_before", "Not before (s)"),
    acl_not_after = ProtoField.uint64("smkd.acl.not_after", "Not after (s)"),
    acl_initiator = ProtoField.string("smkd.acl.initiator", "Group initiator"),
    acl_suite = ProtoField.uint8("smkd.acl.suite", "Crypto suite", base.DEC, SUITES),
    acl_key_lifetime = ProtoField.uint32("smkd.acl.key_lifetime", "Key lifetime (s)",
                                         base.DEC),
    acl_strict = ProtoField.uint8("smkd.acl.strict", "Strict (cores only hold keys)",
                                  base.DEC),
    acl_host_count = ProtoField.uint16("smkd.acl.host_count", "Number of host entries",
                                       base.DEC),
    acl_host = ProtoField.string("smkd.acl.host", "Host entry"),
    acl_has_trusted = ProtoField.uint8("smkd.acl.has_trusted_routers",
                                       "Trusted-router ACL present", base.DEC),
    acl_trusted_count = ProtoField.uint16("smkd.acl.trusted_router_count",
                                          "Number of trusted routers", base.DEC),
    acl_trusted = ProtoField.string("smkd.acl.trusted_router", "Trusted router"),
    acl_central = ProtoField.uint8("smkd.acl.central",
                                   "Central (only the primary core holds keys)",
                                   base.DEC),
    acl_signature_length = ProtoField.uint16("smkd.acl.signature_length",
                                             "Initiator signature length", base.DEC),
    acl_signature = ProtoField.bytes("smkd.acl.signature", "Initiator signature"),

    sealed_acl_length = ProtoField.uint16("smkd.sealed_acl.length",
                                          "Sealed ACL length", base.DEC),
    sealed_acl = ProtoField.bytes("smkd.sealed_acl.ciphertext", "Sealed ACL"),

    host_bundle_recipient = ProtoField.string("smkd.host_bundle.recipient",
                                              "Recipient"),
    host_bundle_length = ProtoField.uint16("smkd.host_bundle.sealed_length",
                                           "Sealed length", base.DEC),
    host_bundle = ProtoField.bytes("smkd.host_bundle.ciphertext", "Sealed bundle"),
    hop_bundle_recipient = ProtoField.string("smkd.hop_bundle.recipient", "Recipient"),
    hop_bundle_length = ProtoField.uint16("smkd.hop_bundle.sealed_length",
                                          "Sealed length", base.DEC),
    hop_bundle = ProtoField.bytes("smkd.hop_bundle.ciphertext", "Sealed bundle"),

    path_count = ProtoField.uint16("smkd.path.count", "Number of routers", base.DEC),
    path_router = ProtoField.string("smkd.path.router", "Router"),

    reason_code = ProtoField.uint8("smkd.reason.code", "Reason", base.DEC,
                                   REASON_CODES),
    reason_text_length = ProtoField.uint8("smkd.reason.text_length", "Text length",
                                          base.DEC),
    reason_text = ProtoField.string("smkd.reason.text", "Text"),

    hello_heard_count = ProtoField.uint16("smkd.hello.heard_count",
                                         "Number of routers heard", base.DEC),
    hello_heard = ProtoField.string("smkd.hello.heard", "Router heard"),
    hello_summary_count = ProtoField.uint16("smkd.hello.summary_count",
                                           "Number of LSA summaries", base.DEC),
    hello_summary_origin = ProtoField.string("smkd.hello.summary_origin",
                                            "LSA origin"),
    hello_summary_sequence = ProtoField.uint64("smkd.hello.summary_sequence",
                                              "LSA sequence"),

    lsa_body_length = ProtoField.uint16("smkd.lsa.body_length", "LSA body length",
                                        base.DEC),
    lsa_origin = ProtoField.string("smkd.lsa.origin", "Origin"),
    lsa_address = ProtoField.ipv4("smkd.lsa.address", "Origin address"),
    lsa_sequence = ProtoField.uint64("smkd.lsa.sequence", "Sequence"),
    lsa_link_count = ProtoField.uint16("smkd.lsa.link_count", "Number of links",
                                       base.DEC),
    lsa_neighbour = ProtoField.string("smkd.lsa.neighbour", "Neighbour"),
    lsa_cost = ProtoField.uint32("smkd.lsa.cost", "Cost", base.DEC),
    lsa_signature_length = ProtoField.uint16("smkd.lsa.signature_length",
                                             "Origin signature length", base.DEC),
    lsa_signature = ProtoField.bytes("smkd.lsa.signature", "Origin signature"),

    handle_recipient = ProtoField.string("smkd.handle.recipient", "Recipient"),
    handle_length = ProtoField.uint16("smkd.handle.sealed_length", "Sealed length",
                                      base.DEC),
    handle = ProtoField.bytes("smkd.handle.ciphertext", "Sealed handle secret"),
    host_path_recipient = ProtoField.string("smkd.host_path.recipient", "Recipient"),
    host_path_length = ProtoField.uint16("smkd.host_path.sealed_length",
                                         "Sealed length", base.DEC),
    host_path = ProtoField.bytes("smkd.host_path.ciphertext", "Sealed key tree path"),
    hop_path_recipient = ProtoField.string("smkd.hop_path.recipient", "Recipient"),
    hop_path_length = ProtoField.uint16("smkd.hop_path.sealed_length",
                                        "Sealed length", base.DEC),
    hop_path = ProtoField.bytes("smkd.hop_path.ciphertext", "Sealed key tree path"),

    rekey_body_length = ProtoField.uint32("smkd.rekey.body_length",
                                          "Notice body length", base.DEC),
    rekey_group = ProtoField.ipv4("smkd.rekey.group", "Group address"),
    rekey_epoch = ProtoField.uint32("smkd.rekey.epoch", "Epoch", base.DEC),
    rekey_kind = ProtoField.uint8("smkd.rekey.kind", "Kind", base.DEC, REKEY_KINDS),
    rekey_issued = ProtoField.uint64("smkd.rekey.issued", "Issued (ms)"),
    rekey_activation = ProtoField.uint32("smkd.rekey.activation_ms",
                                         "Activation delay (ms)", base.DEC),
    rekey_grace = ProtoField.uint32("smkd.rekey.grace_ms", "Grace window (ms)",
                                    base.DEC),
    rekey_sealed_length = ProtoField.uint16("smkd.rekey.sealed_length",
                                            "Bundle under the KEK, length", base.DEC),
    rekey_sealed = ProtoField.bytes("smkd.rekey.sealed", "Bundle under the KEK"),
    rekey_has_acl = ProtoField.uint8("smkd.rekey.has_acl", "New ACL present",
                                     base.DEC),
    rekey_signer = ProtoField.string("smkd.rekey.signer", "Notice signer"),
    rekey_signature_length = ProtoField.uint16("smkd.rekey.signature_length",
                                               "Notice signature length", base.DEC),
    rekey_signature = ProtoField.bytes("smkd.rekey.signature", "Notice signature"),

    sender_request_spi = ProtoField.uint32("smkd.sender_request.spi", "Sender SPI",
                                           base.HEX),
    sender_request_nonce = ProtoField.bytes("smkd.sender_request.nonce", "Nonce"),
    sender_request_verify_length = ProtoField.uint16(
        "smkd.sender_request.verify_key_length", "Sender key length", base.DEC),
    sender_request_verify = ProtoField.bytes("smkd.sender_request.verify_key",
                                             "Sender key (public)"),
    sender_request_exchange_length = ProtoField.uint16(
        "smkd.sender_request.exchange_key_length", "Exchange key length", base.DEC),
    sender_request_exchange = ProtoField.bytes("smkd.sender_request.exchange_key",
                                               "Exchange key (public)"),
    sender_grant_spi = ProtoField.uint32("smkd.sender_grant.spi", "Sender SPI",
                                         base.HEX),
    sender_grant_not_after = ProtoField.uint64("smkd.sender_grant.not_after",
                                               "Not after (s)"),
    sender_grant_sealed_length = ProtoField.uint16("smkd.sender_grant.sealed_length",
                                                   "Sealed length", base.DEC),
    sender_grant_sealed = ProtoField.bytes("smkd.sender_grant.sealed",
                                           "Sealed session key"),

    wraps_count = ProtoField.uint8("smkd.wraps.count", "Number of branch wraps",
                                   base.DEC),
    wraps_owner = ProtoField.string("smkd.wraps.owner", "Key tree owner"),
    wraps_root = ProtoField.uint32("smkd.wraps.root", "New root node", base.DEC),
    wraps_entry_count = ProtoField.uint16("smkd.wraps.entry_count",
                                          "Number of key wraps", base.DEC),
    wraps_entry = ProtoField.bytes("smkd.wraps.entry", "Key wrap"),
    wraps_sealed_length = ProtoField.uint16("smkd.wraps.sealed_length",
                                            "Bundle under the new root, length",
                                            base.DEC),
    wraps_sealed = ProtoField.bytes("smkd.wraps.sealed", "Bundle under the new root"),

    data_on_tree = ProtoField.uint8("smkd.data.on_tree", "On tree", base.DEC, nil,
                                    0x01),
    data_hop_limit = ProtoField.uint8("smkd.data.hop_limit", "Hop limit", base.DEC),
    data_kind = ProtoField.uint8("smkd.data.kind", "Kind", base.DEC, DATA_KINDS),
    data_group = ProtoField.ipv4("smkd.data.group", "Group address"),
    data_primary_core = ProtoField.ipv4("smkd.data.primary_core", "Primary core"),
    data_group_spi = ProtoField.uint32("smkd.data.group_spi", "Group SPI", base.HEX),
    data_epoch = ProtoField.uint32("smkd.data.epoch", "Epoch", base.DEC),
    data_sender_spi = ProtoField.uint32("smkd.data.sender_spi", "Sender SPI",
                                        base.HEX),
    data_seq = ProtoField.uint64("smkd.data.seq", "Sequence number"),
    data_sender = ProtoField.string("smkd.data.sender", "Sender"),
    data_ciphertext_length = ProtoField.uint32("smkd.data.ciphertext_length",
                                               "Ciphertext length", base.DEC),
    data_ciphertext = ProtoField.bytes("smkd.data.ciphertext", "Ciphertext"),
    data_signature_length = ProtoField.uint16("smkd.data.signature_length",
                                              "Origin signature length", base.DEC),
    data_signature = ProtoField.bytes("smkd.data.signature", "Origin signature"),
    data_handle_length = ProtoField.uint8("smkd.data.handle_length",
                                          "Packet handle length", base.DEC),
    data_handle = ProtoField.bytes("smkd.data.handle", "Packet handle"),

    signer = ProtoField.string("smkd.signature.signer", "Signer"),
    signature_suite = ProtoField.uint8("smkd.signature.suite", "Crypto suite",
                                       base.DEC, SUITES),
    signature_length = ProtoField.uint16("smkd.signature.length", "Signature length",
                                         base.DEC),
    signature = ProtoField.bytes("smkd.signature.value", "Signature"),
}

local field_list = {}
for _, field in pairs(pf) do
    field_list[#field_list + 1] = field
end
smkd.fields = field_list

local ef = {
    malformed = ProtoExpert.new("smkd.malformed", "Malformed smkd message",
                                expert.group.MALFORMED, expert.severity.ERROR),
    bad_checksum = ProtoExpert.new("smkd.bad_checksum", "Bad checksum",
                                   expert.group.CHECKSUM, expert.severity.ERROR),
    truncated = ProtoExpert.new("smkd.truncated", "Capture shorter than the datagram",
                                expert.group.MALFORMED, expert.severity.WARN),
}
smkd.experts = { ef.malformed, ef.bad_checksum, ef.truncated }

smkd.prefs.port = Pref.uint("UDP port", DEFAULT_PORT,
                            "UDP port on which smkd agents exchange control messages")

-- errors raised by a cursor carry this metatable, so that the handler can tell
-- a malformed datagram from a fault in this script
local Malformed = {}

local function malformed(text)
    error(setmetatable({ text = text }, Malformed), 0)
end

local function describe_error(failure)
    if getmetatable(failure) == Malformed then
        return failure.text
    end
    return "dissector fault: " .. tostring(failure)
end

-- per-packet state: the problem count flags the Info column, and the names
-- seen in the TLVs make up its summary
local problems = 0
local seen = {}

local function flag(item, text)
    problems = problems + 1
    item:add_proto_expert_info(ef.malformed, text)
end

-- Reads fields from tvb[pos, limit), never past limit. A read that does not fit
-- raises a Malformed error naming the field.
local Cursor = {}
Cursor.__index = Cursor

local function new_cursor(tvb, pos, limit)
    return setmetatable({ tvb = tvb, pos = pos, limit = limit }, Cursor)
end

function Cursor:remaining()
    return self.limit - self.pos
end

function Cursor:take(length, what)
    if length < 0 or self.pos + length > self.limit then
        malformed(string.format("%s needs %d bytes at offset %d, %d left",
                                what, length, self.pos, self.limit - self.pos))
    end
    local start = self.pos
    self.pos = self.pos + length
    return self.tvb:range(start, length), start
end

-- The bytes of range as text, with "?" for every byte that is not printable
-- ASCII, so that garbage never produces invalid UTF-8. Empty ranges give "".
local function text_of(range)
    if range:len() == 0 then
        return ""
    end
    local text = range:raw():gsub("[^\32-\126]", "?")
    return text
end

function Cursor:add_uint(tree, field, size, what)
    local range = self:take(size, what)
    local value
    if size == 8 then
        value = range:uint64():tonumber()
    else
        value = range:uint()
    end
    return value, tree:add(field, range)
end

function Cursor:add_bytes(tree, field, length, what)
    return tree:add(field, (self:take(length, what)))
end

-- a length-prefixed blob: the length field, then the bytes
function Cursor:add_blob(tree, length_field, value_field, prefix_size, what)
    local length = self:add_uint(tree, length_field, prefix_size, what .. " length")
    self:add_bytes(tree, value_field, length, what)
    return length
end

local function valid_name(text)
    return #text >= 1 and #text <= MAX_NAME_SIZE and text:match("^[%w_.%-]+$") ~= nil
end

local function valid_pattern(text)
    return #text >= 1 and #text <= MAX_NAME_SIZE
        and text:match("^[%w_.%-%*%?%[%]]+$") ~= nil
end

-- a node or group name: a one-byte length, then ASCII
function Cursor:add_name(tree, field, what)
    local length_range, start = self:take(1, what .. " length")
    local length = length_range:uint()
    local text = text_of(self:take(length, what))
    local item = tree:add(field, self.tvb:range(start, 1 + length), text)
    if not valid_name(text) then
        flag(item, string.format("invalid %s %q", what, text))
    end
    return text
end

-- a name list: a two-byte count, then that many names
function Cursor:add_names(tree, count_field, name_field, what)
    local count, item = self:add_uint(tree, count_field, 2, what .. " count")
    if count * 2 > self:remaining() then
        flag(item, string.format("%d %ss cannot fit in %d bytes", count, what,
                                 self:remaining()))
        malformed(string.format("%d %ss cannot fit in the field", count, what))
    end
    local names = {}
    for index = 1, count do
        names[index] = self:add_name(tree, name_field, what)
    end
    return names
end

-- the date of a Unix time in UTC, or "" for times os.date cannot format
local function utc_date(seconds)
    -- year 9999 ends here; garbage timestamps beyond it make os.date fail
    if seconds < 0 or seconds > 253402300799 then
        return ""
    end
    local ok, text = pcall(os.date, "! (%Y-%m-%d %H:%M:%S UTC)", seconds)
    if not ok or text == nil then
        return ""
    end
    return text
end

function Cursor:add_timestamp(tree, field, what)
    local milliseconds, item = self:add_uint(tree, field, 8, what)
    item:append_text(utc_date(math.floor(milliseconds / 1000)))
    return milliseconds
end

local function add_unix_seconds(cursor, tree, field, what)
    local seconds, item = cursor:add_uint(tree, field, 8, what)
    item:append_text(utc_date(seconds))
    return seconds
end

-- Each TLV decoder reads the value through a cursor limited to the value, adds
-- its fields to tree and returns a short summary for the TLV's tree item.
local decoders = {}

decoders[1] = function(cursor, tree)
    cursor:add_timestamp(tree, pf.token_timestamp, "token timestamp")
    cursor:add_bytes(tree, pf.token_nonce, NONCE_SIZE, "token nonce")
    local sender = cursor:add_name(tree, pf.token_sender, "token sender")
    local recipient = cursor:add_name(tree, pf.token_recipient, "token recipient")
    seen.sender, seen.recipient = sender, recipient
    return string.format("token_%s for %s", sender, recipient)
end

decoders[2] = function(cursor, tree)
    cursor:add_timestamp(tree, pf.host_timestamp, "host token timestamp")
    cursor:add_bytes(tree, pf.host_nonce, NONCE_SIZE, "host token nonce")
    local host = cursor:add_name(tree, pf.host_name, "host")
    seen.host = host
    cursor:add_uint(tree, pf.host_group, 4, "host token group")
    cursor:add_uint(tree, pf.host_suite, 1, "host token suite")
    local length = cursor:add_blob(tree, pf.host_signature_length, pf.host_signature,
                                   2, "host token signature")
    return string.format("[token_%s]^SK_%s, signature %d bytes", host, host, length)
end

-- a flag byte, which must be 0 or 1
local function add_flag(cursor, tree, field, what)
    local value, item = cursor:add_uint(tree, field, 1, what)
    if value > 1 then
        flag(item, string.format("%s byte %d is neither 0 nor 1", what, value))
    end
    return value
end

local function add_acl_body(cursor, tree)
    cursor:add_uint(tree, pf.acl_group, 4, "ACL group")
    cursor:add_uint(tree, pf.acl_serial, 4, "ACL serial")
    local mode, mode_item = cursor:add_uint(tree, pf.acl_mode, 1, "ACL mode")
    if ACL_MODES[mode] == nil then
        flag(mode_item, string.format("unknown ACL mode %d", mode))
    end
    add_unix_seconds(cursor, tree, pf.acl_not_before, "ACL not-before time")
    add_unix_seconds(cursor, tree, pf.acl_not_after, "ACL not-after time")
    local initiator = cursor:add_name(tree, pf.acl_initiator, "initiator")
    cursor:add_uint(tree, pf.acl_suite, 1, "ACL suite")
    cursor:add_uint(tree, pf.acl_key_lifetime, 4, "key lifetime")
    add_flag(cursor, tree, pf.acl_strict, "strict flag")

    -- host entries are names or shell-style patterns such as h-*
    local count, count_item = cursor:add_uint(tree, pf.acl_host_count, 2,
                                              "ACL entry count")
    if count * 2 > cursor:remaining() then
        flag(count_item, string.format("%d ACL entries cannot fit", count))
        malformed(string.format("%d ACL entries cannot fit in the field", count))
    end
    for _ = 1, count do
        local length_range, start = cursor:take(1, "ACL entry length")
        local size = length_range:uint()
        local text = text_of(cursor:take(size, "ACL entry"))
        local item = tree:add(pf.acl_host, cursor.tvb:range(start, 1 + size), text)
        if not valid_pattern(text) then
            flag(item, string.format("invalid ACL entry %q", text))
        end
    end

    local has_trusted = add_flag(cursor, tree, pf.acl_has_trusted,
                                 "trusted-router flag")
    if has_trusted == 1 then
        cursor:add_names(tree, pf.acl_trusted_count, pf.acl_trusted, "trusted router")
    end
    add_flag(cursor, tree, pf.acl_central, "central flag")
    return initiator, count
end

decoders[3] = function(cursor, tree)
    local body_length = cursor:add_uint(tree, pf.acl_body_length, 2, "ACL body length")
    local body = new_cursor(cursor.tvb, cursor.pos, cursor.pos + body_length)
    cursor:take(body_length, "ACL body")
    local body_tree = tree:add(smkd, cursor.tvb:range(body.pos, body_length),
                               string.format("ACL body (%d bytes)", body_length))

    -- a broken body leaves the initiator's signature after it readable
    local ok, initiator, count = pcall(add_acl_body, body, body_tree)
    if not ok then
        flag(body_tree, describe_error(initiator))
        initiator, count = "?", 0
    elseif body:remaining() ~= 0 then
        flag(body_tree, string.format("%d trailing bytes after the ACL body",
                                      body:remaining()))
    end

    local signature_length = cursor:add_blob(tree, pf.acl_signature_length,
                                             pf.acl_signature, 2, "ACL signature")
    return string.format("[ACL]^SK_%s, %d entries, body %d bytes, signature %d bytes",
                         initiator, count, body_length, signature_length)
end

decoders[4] = function(cursor, tree)
    local length = cursor:remaining()
    local item = tree:add(pf.sealed_acl_length, length)
    item:set_generated()
    cursor:add_bytes(tree, pf.sealed_acl, length, "sealed ACL")
    if length == 0 then
        flag(item, "empty sealed ACL")
    end
    return string.format("{[ACL]}^PK_core, %d bytes", length)
end

local function bundle_decoder(recipient_field, length_field, value_field)
    return function(cursor, tree)
        local recipient = cursor:add_name(tree, recipient_field, "bundle recipient")
        local length = cursor:remaining()
        local item = tree:add(length_field, length)
        item:set_generated()
        cursor:add_bytes(tree, value_field, length, "sealed bundle")
        if length == 0 then
            flag(item, "empty sealed bundle")
        end
        return string.format("{grpKey, KEK, Sparams}^PK_%s, %d bytes",
                             recipient, length)
    end
end

decoders[5] = bundle_decoder(pf.host_bundle_recipient, pf.host_bundle_length,
                             pf.host_bundle)
decoders[6] = bundle_decoder(pf.hop_bundle_recipient, pf.hop_bundle_length,
                             pf.hop_bundle)

decoders[7] = function(cursor, tree)
    local routers = cursor:add_names(tree, pf.path_count, pf.path_router, "path router")
    return "path " .. table.concat(routers, " > ")
end

decoders[8] = function(cursor, tree)
    local code, item = cursor:add_uint(tree, pf.reason_code, 1, "reason code")
    if REASON_CODES[code] == nil then
        flag(item, string.format("unknown reason code %d", code))
    end
    local length = cursor:add_uint(tree, pf.reason_text_length, 1, "reason text length")
    local range = cursor:take(length, "reason text")
    tree:add(pf.reason_text, range, text_of(range))
    local text = text_of(range)
    return (REASON_CODES[code] or tostring(code)) .. (text ~= "" and ": " .. text or "")
end

decoders[9] = function(cursor, tree)
    local heard = cursor:add_names(tree, pf.hello_heard_count, pf.hello_heard,
                                   "heard router")

    -- each summary entry takes at least ten bytes: a name and a sequence
    local count, item = cursor:add_uint(tree, pf.hello_summary_count, 2,
                                        "summary count")
    if count * 10 > cursor:remaining() then
        flag(item, string.format("%d summary entries cannot fit", count))
        malformed(string.format("%d summary entries cannot fit in the field", count))
    end
    for _ = 1, count do
        cursor:add_name(tree, pf.hello_summary_origin, "LSA origin")
        cursor:add_uint(tree, pf.hello_summary_sequence, 8, "LSA sequence")
    end
    return string.format("heard %s, %d LSA summaries", table.concat(heard, ", "),
                         count)
end

local function add_lsa_body(cursor, tree)
    local origin = cursor:add_name(tree, pf.lsa_origin, "LSA origin")
    cursor:add_uint(tree, pf.lsa_address, 4, "LSA address")
    cursor:add_uint(tree, pf.lsa_sequence, 8, "LSA sequence")

    -- each link takes at least six bytes: a name and a cost
    local count, item = cursor:add_uint(tree, pf.lsa_link_count, 2, "LSA link count")
    if count * 6 > cursor:remaining() then
        flag(item, string.format("%d LSA links cannot fit", count))
        malformed(string.format("%d LSA links cannot fit in the field", count))
    end
    for _ = 1, count do
        cursor:add_name(tree, pf.lsa_neighbour, "LSA neighbour")
        cursor:add_uint(tree, pf.lsa_cost, 4, "LSA cost")
    end
    return origin, count
end

decoders[10] = function(cursor, tree)
    local body_length = cursor:add_uint(tree, pf.lsa_body_length, 2, "LSA body length")
    local body = new_cursor(cursor.tvb, cursor.pos, cursor.pos + body_length)
    cursor:take(body_length, "LSA body")
    local body_tree = tree:add(smkd, cursor.tvb:range(body.pos, body_length),
                               string.format("LSA body (%d bytes)", body_length))

    local ok, origin, count = pcall(add_lsa_body, body, body_tree)
    if not ok then
        flag(body_tree, describe_error(origin))
        origin, count = "?", 0
    elseif body:remaining() ~= 0 then
        flag(body_tree, string.format("%d trailing bytes after the LSA body",
                                      body:remaining()))
    end
    local signature_length = cursor:add_blob(tree, pf.lsa_signature_length,
                                             pf.lsa_signature, 2, "LSA signature")
    return string.format("[LSA]^SK_%s, %d links, signature %d bytes", origin, count,
                         signature_length)
end

-- a secret sealed with HPKE to one named recipient, shown as opaque bytes
local function sealed_decoder(recipient_field, length_field, value_field, label)
    return function(cursor, tree)
        local recipient = cursor:add_name(tree, recipient_field, label .. " recipient")
        local length = cursor:remaining()
        local item = tree:add(length_field, length)
        item:set_generated()
        cursor:add_bytes(tree, value_field, length, label)
        if length == 0 then
            flag(item, "empty " .. label)
        end
        return string.format("{%s}^PK_%s, %d bytes", label, recipient, length)
    end
end

decoders[0x10] = sealed_decoder(pf.handle_recipient, pf.handle_length, pf.handle,
                                "packet handle secret")
decoders[0x14] = sealed_decoder(pf.host_path_recipient, pf.host_path_length,
                                pf.host_path, "key tree path")
decoders[0x15] = sealed_decoder(pf.hop_path_recipient, pf.hop_path_length,
                                pf.hop_path, "key tree path")

local function add_rekey_body(cursor, tree)
    cursor:add_uint(tree, pf.rekey_group, 4, "notice group")
    local epoch = cursor:add_uint(tree, pf.rekey_epoch, 4, "notice epoch")
    local kind, kind_item = cursor:add_uint(tree, pf.rekey_kind, 1, "notice kind")
    if REKEY_KINDS[kind] == nil then
        flag(kind_item, string.format("unknown re-key kind %d", kind))
    end
    cursor:add_timestamp(tree, pf.rekey_issued, "notice issue time")
    cursor:add_uint(tree, pf.rekey_activation, 4, "activation delay")
    cursor:add_uint(tree, pf.rekey_grace, 4, "grace window")
    cursor:add_blob(tree, pf.rekey_sealed_length, pf.rekey_sealed, 2,
                    "bundle under the KEK")
    local has_acl = add_flag(cursor, tree, pf.rekey_has_acl, "ACL flag")
    if has_acl == 1 then
        local acl_tree = tree:add(smkd, cursor.tvb:range(cursor.pos, cursor:remaining()),
                                  "New ACL")
        decoders[3](cursor, acl_tree)
    end
    return REKEY_KINDS[kind] or tostring(kind), epoch
end

decoders[0x11] = function(cursor, tree)
    local body_length = cursor:add_uint(tree, pf.rekey_body_length, 4,
                                        "notice body length")
    local body = new_cursor(cursor.tvb, cursor.pos, cursor.pos + body_length)
    cursor:take(body_length, "notice body")
    local body_tree = tree:add(smkd, cursor.tvb:range(body.pos, body_length),
                               string.format("Notice body (%d bytes)", body_length))
    local ok, kind, epoch = pcall(add_rekey_body, body, body_tree)
    if not ok then
        flag(body_tree, describe_error(kind))
        kind, epoch = "?", 0
    elseif body:remaining() ~= 0 then
        flag(body_tree, string.format("%d trailing bytes after the notice body",
                                      body:remaining()))
    end
    local signer = cursor:add_name(tree, pf.rekey_signer, "notice signer")
    cursor:add_blob(tree, pf.rekey_signature_length, pf.rekey_signature, 2,
                    "notice signature")
    return string.format("[%s re-key to epoch %d]^SK_%s", kind, epoch, signer)
end

decoders[0x12] = function(cursor, tree)
    local spi = cursor:add_uint(tree, pf.sender_request_spi, 4, "sender SPI")
    cursor:add_bytes(tree, pf.sender_request_nonce, NONCE_SIZE, "request nonce")
    cursor:add_blob(tree, pf.sender_request_verify_length, pf.sender_request_verify, 2,
                    "sender key")
    cursor:add_blob(tree, pf.sender_request_exchange_length,
                    pf.sender_request_exchange, 2, "exchange key")
    return string.format("sender SPI 0x%08x, sender key, exchange key", spi)
end

decoders[0x13] = function(cursor, tree)
    local spi = cursor:add_uint(tree, pf.sender_grant_spi, 4, "sender SPI")
    add_unix_seconds(cursor, tree, pf.sender_grant_not_after, "grant expiry")
    local length = cursor:add_blob(tree, pf.sender_grant_sealed_length,
                                   pf.sender_grant_sealed, 2, "sealed session key")
    return string.format("{session key}^PK_exchange for SPI 0x%08x, %d bytes", spi,
                         length)
end

local function add_branch_wrap(cursor, tree)
    local owner = cursor:add_name(tree, pf.wraps_owner, "branch wrap owner")
    cursor:add_uint(tree, pf.wraps_root, 4, "new root node")
    local count, item = cursor:add_uint(tree, pf.wraps_entry_count, 2,
                                        "key wrap count")
    if count * LKH_ENTRY_SIZE > cursor:remaining() then
        flag(item, string.format("%d key wraps cannot fit", count))
        malformed(string.format("%d key wraps cannot fit in the field", count))
    end
    for _ = 1, count do
        cursor:add_bytes(tree, pf.wraps_entry, LKH_ENTRY_SIZE, "key wrap")
    end
    cursor:add_blob(tree, pf.wraps_sealed_length, pf.wraps_sealed, 2,
                    "bundle under the new root")
    return string.format("%s: %d wraps", owner, count)
end

decoders[0x16] = function(cursor, tree)
    local count = cursor:add_uint(tree, pf.wraps_count, 1, "branch wrap count")
    local parts = {}
    for _ = 1, count do
        parts[#parts + 1] = add_branch_wrap(cursor, tree)
    end
    return table.concat(parts, "; ")
end

decoders[SIGNATURE_TLV] = function(cursor, tree)
    local signer = cursor:add_name(tree, pf.signer, "signer")
    seen.signer = signer
    cursor:add_uint(tree, pf.signature_suite, 1, "signature suite")
    local length = cursor:add_blob(tree, pf.signature_length, pf.signature, 2,
                                   "signature")
    return string.format("^SK_%s, %d bytes", signer, length)
end

-- The Internet checksum of RFC 1071 over the whole datagram sums to 0xFFFF
-- when the checksum field is right. Plain arithmetic avoids bit operations,
-- which differ between the Lua versions that Wireshark embeds.
local function checksum_holds(tvb, length)
    local total = 0
    for offset = 0, length - 2, 2 do
        total = total + tvb:range(offset, 2):uint()
    end
    if length % 2 == 1 then
        total = total + tvb:range(length - 1, 1):uint() * 256
    end
    while total > 0xFFFF do
        total = (total % 0x10000) + math.floor(total / 0x10000)
    end
    return total == 0xFFFF
end

local function dissect_header(cursor, tree)
    local header = tree:add(smkd, cursor.tvb:range(0, math.min(cursor.limit,
                                                               FIXED_HEADER_SIZE)),
                            "Control header")
    local first, version_item = cursor:add_uint(header, pf.version, 1, "version")
    local version = math.floor(first / 16)
    if version ~= VERSION then
        flag(version_item, string.format("unsupported version %d", version))
    end
    local message_type, type_item = cursor:add_uint(header, pf.type, 1, "type")
    local type_name = MESSAGE_TYPES[message_type]
    if type_name == nil then
        flag(type_item, string.format("unknown message type %d", message_type))
    end
    local code, code_item = cursor:add_uint(header, pf.code, 1, "code")
    local code_names = CODE_NAMES[message_type]
    local code_name = nil
    if code_names ~= nil then
        code_name = code_names[code] or "unknown"
        code_item:append_text(" (" .. code_name .. ")")
    end
    local code_valid = code == 0
    if code_names ~= nil then
        code_valid = code_names[code] ~= nil
    end
    if type_name ~= nil and not code_valid then
        flag(code_item, string.format("unknown %s code %d", type_name, code))
    end
    local core_count, count_item = cursor:add_uint(header, pf.core_count, 1,
                                                   "core count")
    if core_count > MAX_CORES then
        flag(count_item, string.format("%d cores exceed %d", core_count, MAX_CORES))
    end
    local length, length_item = cursor:add_uint(header, pf.header_length, 2,
                                                "header length")
    if length ~= FIXED_HEADER_SIZE + 4 * core_count then
        flag(length_item, string.format("header length %d does not match %d cores",
                                        length, core_count))
    end
    local _, checksum_item = cursor:add_uint(header, pf.checksum, 2, "checksum")
    cursor:add_uint(header, pf.group, 4, "group address")
    cursor:add_uint(header, pf.group_mask, 4, "group mask")
    cursor:add_uint(header, pf.origin, 4, "packet origin")
    cursor:add_uint(header, pf.primary_core, 4, "primary core")
    cursor:add_uint(header, pf.target_core, 4, "target core")
    for _ = 1, core_count do
        cursor:add_uint(header, pf.core, 4, "core list")
    end
    header:set_len(cursor.pos)

    -- the Info column names the code of reports always, of joins when unusual
    local title = type_name or string.format("type %d", message_type)
    if code_name ~= nil and (message_type == 0x10 or code ~= 0) then
        title = title .. " " .. code_name
    end
    return title, checksum_item, message_type
end

local function dissect_tlv(cursor, tree)
    local start = cursor.pos
    local type_range = cursor:take(1, "TLV type")
    local tlv_type = type_range:uint()
    local length_range = cursor:take(2, "TLV length")
    local length = length_range:uint()
    local available = math.min(length, cursor:remaining())
    local tlv_tree = tree:add(smkd, cursor.tvb:range(start, 3 + available),
                              TLV_TYPES[tlv_type] or string.format("TLV %d", tlv_type))
    tlv_tree:add(pf.tlv_type, type_range)
    tlv_tree:add(pf.tlv_length, length_range)
    if length > cursor:remaining() then
        flag(tlv_tree, string.format("TLV length %d exceeds the %d bytes left",
                                     length, cursor:remaining()))
        malformed("TLV runs past the end of the datagram")
    end

    local value = new_cursor(cursor.tvb, cursor.pos, cursor.pos + length)
    cursor:take(length, "TLV value")
    local decoder = decoders[tlv_type]
    if decoder == nil then
        flag(tlv_tree, string.format("unknown TLV type %d", tlv_type))
        return tlv_type
    end

    -- a broken value spoils only its own TLV, since the length bounds it
    local ok, result = pcall(decoder, value, tlv_tree)
    if not ok then
        flag(tlv_tree, describe_error(result))
    elseif value:remaining() ~= 0 then
        flag(tlv_tree, string.format("%d trailing bytes after TLV %s",
                                     value:remaining(), TLV_TYPES[tlv_type]))
    else
        tlv_tree:append_text(": " .. result)
    end
    return tlv_type
end

-- Returns the set of TLV types read before the signature, and whether the
-- SIGNATURE TLV came.
local function dissect_tlvs(cursor, tree)
    local last_type = 0
    local present = {}
    while cursor:remaining() > 0 do
        local tlv_type = dissect_tlv(cursor, tree)
        if tlv_type <= last_type then
            flag(tree, string.format("TLV type %d out of order or repeated", tlv_type))
        end
        last_type = tlv_type
        if tlv_type == SIGNATURE_TLV then
            if cursor:remaining() > 0 then
                flag(tree, string.format("%d bytes after the signature",
                                         cursor:remaining()))
            end
            return present, true
        end
        present[tlv_type] = true
    end
    return present, false
end

-- flags TLVs that the message type requires but lacks, or cannot carry
local function check_layout(tree, message_type, present)
    local layout = LAYOUTS[message_type]
    if layout == nil then
        return
    end
    local type_name = MESSAGE_TYPES[message_type]
    for tlv_type, required in pairs(layout) do
        if required and not present[tlv_type] then
            flag(tree, string.format("%s lacks its %s TLV", type_name,
                                     TLV_TYPES[tlv_type]))
        end
    end
    for tlv_type in pairs(present) do
        if layout[tlv_type] == nil then
            flag(tree, string.format("%s cannot carry %s", type_name,
                                     TLV_TYPES[tlv_type] or tostring(tlv_type)))
        end
    end

    -- an ACL upload carries its ACL either in clear or sealed, never both
    if message_type == 0x12 and (present[3] == true) == (present[4] == true) then
        flag(tree, "an ACL upload carries exactly one ACL")
    end
end

-- group data: its own header, the encrypted body, the sender's signature and
-- the packet handle of the hop (node/datapacket.py)
local function dissect_data(cursor, root)
    local first, version_item = cursor:add_uint(root, pf.version, 1, "version")
    if math.floor(first / 16) ~= VERSION then
        flag(version_item, string.format("unsupported version %d", math.floor(first / 16)))
    end
    cursor:add_uint(root, pf.type, 1, "type")
    local flags, flags_item = cursor:add_uint(root, pf.data_on_tree, 1, "data flags")
    if flags > 1 then
        flag(flags_item, string.format("unknown data flags 0x%02x", flags))
    end
    cursor:add_uint(root, pf.data_hop_limit, 1, "hop limit")
    local kind, kind_item = cursor:add_uint(root, pf.data_kind, 1, "data kind")
    if DATA_KINDS[kind] == nil then
        flag(kind_item, string.format("unknown data kind %d", kind))
    end
    cursor:add_uint(root, pf.data_group, 4, "group address")
    cursor:add_uint(root, pf.data_primary_core, 4, "primary core")
    cursor:add_uint(root, pf.data_group_spi, 4, "group SPI")
    local epoch = cursor:add_uint(root, pf.data_epoch, 4, "epoch")
    cursor:add_uint(root, pf.data_sender_spi, 4, "sender SPI")
    local seq = cursor:add_uint(root, pf.data_seq, 8, "sequence number")
    local sender = cursor:add_name(root, pf.data_sender, "data sender")
    local length = cursor:add_blob(root, pf.data_ciphertext_length, pf.data_ciphertext,
                                   4, "ciphertext")
    cursor:add_blob(root, pf.data_signature_length, pf.data_signature, 2,
                    "origin signature")
    local handle_length, handle_item = cursor:add_uint(root, pf.data_handle_length, 1,
                                                       "handle length")
    cursor:add_bytes(root, pf.data_handle, handle_length, "packet handle")
    if handle_length ~= 0 and handle_length ~= 16 then
        flag(handle_item, string.format("packet handle of %d bytes", handle_length))
    end
    if cursor:remaining() ~= 0 then
        flag(root, string.format("%d trailing bytes after the data packet",
                                 cursor:remaining()))
    end
    return string.format("DATA %s #%d from %s, epoch %d, %d bytes",
                         DATA_KINDS[kind] or "?", seq, sender, epoch, length)
end

local function dissect(tvb, pinfo, tree)
    local captured = tvb:len()
    local root = tree:add(smkd, tvb:range(0, captured))
    if captured >= 2 and tvb:range(1, 1):uint() == DATA_TYPE then
        local title = dissect_data(new_cursor(tvb, 0, captured), root)
        pinfo.cols.info:set(title)
        root:append_text(", " .. title)
        return
    end
    if tvb:reported_len() > captured then
        root:add_proto_expert_info(ef.truncated, string.format(
            "%d of %d bytes captured", captured, tvb:reported_len()))
    end

    local cursor = new_cursor(tvb, 0, captured)
    local type_name, checksum_item, message_type = dissect_header(cursor, root)
    pinfo.cols.info:set(type_name)
    root:append_text(", " .. type_name)
    if tvb:reported_len() == captured then
        local good = checksum_holds(tvb, captured)
        local status = root:add(pf.checksum_good, good)
        status:set_generated()
        if not good then
            checksum_item:add_proto_expert_info(ef.bad_checksum)
            seen.bad_checksum = true
        end
    end

    local tlvs = root:add(smkd, tvb:range(cursor.pos, captured - cursor.pos),
                          "Security TLVs")
    local present, signed = dissect_tlvs(cursor, tlvs)
    if not signed then
        flag(tlvs, "missing SIGNATURE TLV")
    end
    check_layout(tlvs, message_type, present)
end

local function summarize()
    local parts = {}
    if seen.sender ~= nil then
        parts[#parts + 1] = string.format("token_%s for %s", seen.sender,
                                          seen.recipient)
    end
    if seen.host ~= nil then
        parts[#parts + 1] = "host " .. seen.host
    end
    if seen.signer ~= nil then
        parts[#parts + 1] = "signed by " .. seen.signer
    end
    return table.concat(parts, ", ")
end

function smkd.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol:set("SMKD")
    problems = 0
    seen = {}
    local ok, failure = pcall(dissect, tvb, pinfo, tree)
    if not ok then
        problems = problems + 1
        tree:add_proto_expert_info(ef.malformed, describe_error(failure))
    end
    local summary = summarize()
    if summary ~= "" then
        pinfo.cols.info:append(": " .. summary)
    end
    if seen.bad_checksum then
        pinfo.cols.info:append(" [Bad checksum]")
    end
    if problems > 0 then
        pinfo.cols.info:append(" [Malformed]")
    end
    return tvb:len()
end

local registered_port = nil

local function register_port()
    local udp = DissectorTable.get("udp.port")
    if registered_port ~= nil then
        udp:remove(registered_port, smkd)
    end
    registered_port = smkd.prefs.port
    udp:add(registered_port, smkd)
end

function smkd.prefs_changed()
    if registered_port ~= smkd.prefs.port then
        register_port()
    end
end

register_port()
