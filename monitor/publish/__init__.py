"""MQTT publishing: durable outbox, client, Home Assistant discovery."""
