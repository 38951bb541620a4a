#!/bin/sh
# Runs once in the aws-cli container against moto: the two secrets, the queue, and the EventBridge
# rule that sends Secrets Manager's events to the queue (AWS_ENDPOINT_URL points at moto).
set -eu
aws secretsmanager create-secret --name app/db --secret-string \
  '{"engine":"postgres","username":"app_owner","password":"compose-initial-pw","host":"postgres","port":5432,"dbname":"app"}' >/dev/null
aws secretsmanager create-secret --name reports/db --secret-string \
  '{"engine":"postgres","username":"reports_owner","password":"compose-reports-pw","host":"postgres","port":5432,"dbname":"reports"}' >/dev/null
QUEUE_URL=$(aws sqs create-queue --queue-name rotagate-events --query QueueUrl --output text)
QUEUE_ARN=$(aws sqs get-queue-attributes --queue-url "$QUEUE_URL" --attribute-names QueueArn --query Attributes.QueueArn --output text)
aws events put-rule --name rotagate-secret-events \
  --event-pattern '{"source":["aws.secretsmanager"]}' >/dev/null
aws events put-targets --rule rotagate-secret-events --targets "Id=rotagate-queue,Arn=$QUEUE_ARN" >/dev/null
echo "secrets app/db and reports/db, queue $QUEUE_URL and rule rotagate-secret-events are ready"
