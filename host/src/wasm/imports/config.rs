//! `shoal:plugin/config`: the configuration values the operator granted the listener.

use crate::wasm::bindings::plugin::config;
use crate::wasm::store::ConnState;

impl config::Host for ConnState {
    fn get(&mut self, key: String) -> Option<String> {
        self.capabilities.config_value(&key).map(str::to_string)
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.capabilities.config_values().to_vec()
    }
}
