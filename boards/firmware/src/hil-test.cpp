// hil-test: the test application of the hil OTA test rig (boards/README.md). It speaks the
// line-based JSON test-control protocol, version 1, on the USB serial port: the harness asks it
// to disable/enable updates and resets, reset, sleep, connect/disconnect, report its status,
// and it reports its boot (with the reset reason) and Device OS system events.
//
// Every Device OS call is checked against reference particle-cloud-api.md section 5 (the
// section is named next to each); calls the reference does not list are marked "not in the
// reference" and are listed in boards/README.md to check before the first flash.
//
// Built with Particle's toolchain (not available where hil is developed): see boards/README.md.

#include "Particle.h"

// What the harness installs as "app 3"; an OTA test flashes the same source with 4, 5, ...
#ifndef HIL_APP_VERSION
#define HIL_APP_VERSION 3
#endif
PRODUCT_VERSION(HIL_APP_VERSION);  // 5.9

// 5.4: connect at boot; with the system thread, setup() runs before the cloud is up, so a
// System.disableUpdates() there holds an update that would arrive at boot. Device OS 6.2.0
// enables the system thread by default and only warns about the macro.
SYSTEM_MODE(AUTOMATIC);
SYSTEM_THREAD(ENABLED);

// 5.2: System.resetReason() needs FEATURE_RESET_INFO. (System.enableFeature: not in the
// reference.)
STARTUP(System.enableFeature(FEATURE_RESET_INFO));

namespace {

const int PROTOCOL_VERSION = 1;
const size_t MAX_LINE = 1024;

// What setup() does at every boot (the `setup` command), kept in EEPROM. (EEPROM.get/put: not
// in the reference.)
struct BootConfig {
    uint8_t magic;
    uint8_t updatesEnabled;
    uint8_t resetEnabled;
};
const uint8_t CONFIG_MAGIC = 0xA5;
const int CONFIG_ADDRESS = 0;

char line[MAX_LINE + 1];
size_t lineLen = 0;
bool overflow = false;
unsigned long lineNo = 0;

// System events are queued by the handler (application thread) and printed from loop().
const int EVENT_QUEUE = 32;
struct QueuedEvent {
    const char* name;
    int param;
};
QueuedEvent events[EVENT_QUEUE];
volatile int eventHead = 0;
volatile int eventTail = 0;

// --- a small reader for the host's request lines (flat objects, no escapes in values) -------

// The raw value of "key" in a flat JSON object, or nullptr; *len gets its length.
const char* findValue(const char* obj, const char* key, size_t* len) {
    char pattern[40];
    snprintf(pattern, sizeof(pattern), "\"%s\"", key);
    const char* p = strstr(obj, pattern);
    if (!p) {
        return nullptr;
    }
    p += strlen(pattern);
    while (*p == ' ' || *p == ':') {
        p++;
    }
    const char* end = p;
    if (*p == '"') {
        end = strchr(p + 1, '"');
        if (!end) {
            return nullptr;
        }
        *len = end - p - 1;
        return p + 1;
    }
    while (*end && *end != ',' && *end != '}') {
        end++;
    }
    *len = end - p;
    return p;
}

bool isValue(const char* v, size_t len, const char* want) {
    return v && len == strlen(want) && strncmp(v, want, len) == 0;
}

bool boolField(const char* obj, const char* key, bool fallback) {
    size_t len = 0;
    const char* v = findValue(obj, key, &len);
    if (isValue(v, len, "true")) {
        return true;
    }
    if (isValue(v, len, "false")) {
        return false;
    }
    return fallback;
}

// --- output ----------------------------------------------------------------------------------

void replyOk(unsigned long id) {
    Serial.printlnf("{\"id\":%lu,\"ok\":true}", id);
}

void replyError(unsigned long id, const char* why) {
    Serial.printlnf("{\"id\":%lu,\"ok\":false,\"error\":\"%s\"}", id, why);
}

void logLine(const char* level, const char* message) {
    Serial.printlnf("{\"log\":{\"level\":\"%s\",\"category\":\"app.test\",\"message\":\"%s\"}}",
                    level, message);
}

int systemVersion() {
    // System.versionNumber(): 0x06020000 for 6.2.0 (not in the reference). As a module
    // version: major*1000 + minor*100 + patch.
    uint32_t v = System.versionNumber();
    return ((v >> 24) & 0xFF) * 1000 + ((v >> 16) & 0xFF) * 100 + ((v >> 8) & 0xFF);
}

void printStatus(unsigned long id) {
    Serial.printlnf(
        "{\"id\":%lu,\"ok\":true,\"status\":{\"online\":%s,\"safe_mode\":false,"
        "\"updates_enabled\":%s,\"updates_pending\":%s,\"updates_forced\":%s,"
        "\"reset_enabled\":%s,\"reset_pending\":%s,\"update_status\":%d,"
        "\"system_version\":%d,\"app\":%d,\"reset_reason\":%d,\"uptime_ms\":%lu}}",
        id, Particle.connected() ? "true" : "false",  // 5.5
        System.updatesEnabled() ? "true" : "false",   // 5.1
        System.updatesPending() ? "true" : "false",   // 5.1
        System.updatesForced() ? "true" : "false",    // 5.1
        System.resetEnabled() ? "true" : "false",     // 5.2
        System.resetPending() ? "true" : "false",     // 5.2
        (int)System.updateStatus(),                   // 5.1
        systemVersion(), HIL_APP_VERSION,
        (int)System.resetReason(),  // 5.2
        millis());
}

void printAssets(unsigned long id) {
    Serial.printf("{\"id\":%lu,\"ok\":true,\"assets\":[", id);
    auto assets = System.assetsAvailable();  // 5.6
    for (int i = 0; i < assets.size(); i++) {
        // ApplicationAsset name(), size() (5.6); hash().toString(): not in the reference.
        Serial.printf("%s{\"name\":\"%s\",\"size\":%u,\"hash\":\"%s\"}", i ? "," : "",
                      assets[i].name().c_str(), (unsigned)assets[i].size(),
                      assets[i].hash().toString().c_str());
    }
    Serial.println("]}");
}

void printModules(unsigned long id) {
    // What the application knows: the system part's version and itself. The harness reads the
    // module headers through the debug probe for the full list.
    Serial.printlnf("{\"id\":%lu,\"ok\":true,\"modules\":["
                    "{\"function\":\"system\",\"index\":1,\"version\":%d,\"valid\":true}]}",
                    id, systemVersion());
}

// --- commands --------------------------------------------------------------------------------

void sleepCommand(unsigned long id, const char* obj) {
    size_t len = 0;
    const char* mode = findValue(obj, "mode", &len);
    SystemSleepConfiguration config;  // 5.5
    bool hibernate = false;
    if (isValue(mode, len, "stop")) {
        config.mode(SystemSleepMode::STOP);
    } else if (isValue(mode, len, "ultra_low_power")) {
        config.mode(SystemSleepMode::ULTRA_LOW_POWER);
    } else if (isValue(mode, len, "hibernate")) {
        config.mode(SystemSleepMode::HIBERNATE);
        hibernate = true;
    } else {
        replyError(id, "unknown sleep mode");
        return;
    }
    const char* ms = findValue(obj, "duration_ms", &len);
    if (ms) {
        if (hibernate) {
            // Gen3: the RTC does not run in HIBERNATE (5.5).
            replyError(id, "sleep refused: HIBERNATE cannot wake after a duration on Gen3");
            return;
        }
        config.duration(strtoul(ms, nullptr, 10));
    }
    const char* net = findValue(obj, "network", &len);
    if (isValue(net, len, "standby") || isValue(net, len, "inactive_standby")) {
        if (hibernate) {
            replyError(id, "sleep refused: HIBERNATE turns the radio off");
            return;
        }
#if Wiring_Cellular  // (not in the reference: the platform's network interface)
        network_interface_t iface = NETWORK_INTERFACE_CELLULAR;
#else
        network_interface_t iface = NETWORK_INTERFACE_WIFI_STA;
#endif
        if (isValue(net, len, "inactive_standby")) {
            config.network(iface, SystemSleepNetworkFlag::INACTIVE_STANDBY);  // 5.5
        } else {
            config.network(iface);  // 5.5
        }
    }
    replyOk(id);
    Serial.flush();
    SystemSleepResult result = System.sleep(config);  // 5.5
    if (result.error() != SYSTEM_ERROR_NONE) {
        logLine("error", "System.sleep failed");
    }
}

void handleLine(const char* obj) {
    lineNo++;
    size_t len = 0;
    const char* idText = findValue(obj, "id", &len);
    const char* cmd = findValue(obj, "cmd", &len);
    if (!idText || !cmd) {
        char msg[96];
        snprintf(msg, sizeof(msg), "serial line %lu, column 1: missing `id` or `cmd`", lineNo);
        logLine("error", msg);
        return;
    }
    unsigned long id = strtoul(idText, nullptr, 10);
    if (isValue(cmd, len, "hello")) {
        Serial.printlnf("{\"id\":%lu,\"ok\":true,\"hello\":{\"v\":%d,\"device_id\":\"%s\","
                        "\"platform_id\":%d}}",
                        id, PROTOCOL_VERSION, System.deviceID().c_str(),  // not in the reference
                        PLATFORM_ID);
    } else if (isValue(cmd, len, "updates.disable")) {
        replyOk(id);
        System.disableUpdates();  // 5.1
    } else if (isValue(cmd, len, "updates.enable")) {
        replyOk(id);
        System.enableUpdates();  // 5.1
    } else if (isValue(cmd, len, "reset.disable")) {
        replyOk(id);
        System.disableReset();  // 5.2
    } else if (isValue(cmd, len, "reset.enable")) {
        replyOk(id);
        System.enableReset();  // 5.2
    } else if (isValue(cmd, len, "reset")) {
        replyOk(id);
        Serial.flush();
        if (boolField(obj, "no_wait", false)) {
            System.reset(RESET_NO_WAIT);  // 5.2
        } else {
            System.reset();  // 5.2
        }
    } else if (isValue(cmd, len, "sleep")) {
        sleepCommand(id, obj);
    } else if (isValue(cmd, len, "setup")) {
        BootConfig c = {CONFIG_MAGIC, (uint8_t)boolField(obj, "updates_enabled", true),
                        (uint8_t)boolField(obj, "reset_enabled", true)};
        EEPROM.put(CONFIG_ADDRESS, c);
        replyOk(id);
    } else if (isValue(cmd, len, "connect")) {
        replyOk(id);
        Particle.connect();  // 5.4
    } else if (isValue(cmd, len, "disconnect")) {
        replyOk(id);
        Particle.disconnect();  // 5.4
    } else if (isValue(cmd, len, "status")) {
        printStatus(id);
    } else if (isValue(cmd, len, "modules")) {
        printModules(id);
    } else if (isValue(cmd, len, "assets")) {
        printAssets(id);
    } else {
        replyError(id, "unknown command");
    }
}

// 5.3: runs on the application thread; queue and print from loop().
void onSystemEvent(system_event_t event, int param) {
    const char* name = nullptr;
    switch (event) {
    case firmware_update: name = "firmware_update"; break;
    case firmware_update_pending: name = "firmware_update_pending"; break;
    case reset_pending: name = "reset_pending"; break;
    case reset: name = "reset"; break;
    case firmware_update_status: name = "firmware_update_status"; break;
    case cloud_status: name = "cloud_status"; break;
    default: return;
    }
    int next = (eventHead + 1) % EVENT_QUEUE;
    if (next == eventTail) {
        return;  // full: dropped, as Device OS drops progress events when the queue is full
    }
    events[eventHead] = {name, param};
    eventHead = next;
}

}  // namespace

void setup() {
    Serial.begin();  // 5.8
    BootConfig c;
    EEPROM.get(CONFIG_ADDRESS, c);
    if (c.magic == CONFIG_MAGIC) {
        if (!c.updatesEnabled) {
            System.disableUpdates();  // 5.1: in setup(), with threading, before the cloud is up
        }
        if (!c.resetEnabled) {
            System.disableReset();  // 5.2
        }
    }
    System.on(firmware_update | firmware_update_pending | reset_pending | reset |
                  firmware_update_status | cloud_status,
              onSystemEvent);  // 5.3
    // The boot line; the harness (re)opens the port after the board re-enumerates and may miss
    // it, then learns the reset reason from `status`.
    Serial.printlnf("{\"boot\":{\"v\":%d,\"reset_reason\":%d,\"device_id\":\"%s\","
                    "\"platform_id\":%d,\"system_version\":%d,\"app\":%d}}",
                    PROTOCOL_VERSION, (int)System.resetReason(), System.deviceID().c_str(),
                    PLATFORM_ID, systemVersion(), HIL_APP_VERSION);
}

void loop() {
    while (eventTail != eventHead) {
        QueuedEvent e = events[eventTail];
        eventTail = (eventTail + 1) % EVENT_QUEUE;
        Serial.printlnf("{\"event\":{\"name\":\"%s\",\"param\":%d}}", e.name, e.param);
    }
    while (Serial.available() > 0) {  // 5.8
        int c = Serial.read();
        if (c == '\n') {
            line[lineLen] = 0;
            if (overflow) {
                lineNo++;
                logLine("error", "line longer than 1024 bytes (skipped)");
            } else if (lineLen > 0) {
                handleLine(line);
            }
            lineLen = 0;
            overflow = false;
        } else if (c == '\r') {
            continue;
        } else if (lineLen < MAX_LINE) {
            line[lineLen++] = (char)c;
        } else {
            overflow = true;
        }
    }
}
