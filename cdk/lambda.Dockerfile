# Lambda container image for one modelfn function (deploy.package = "container", or a model
# too large for a zip). The CDK app copies this file into a staged build context holding
# modelfn/, handlers/, functions/<name>/ and requirements.txt; `cdk deploy` builds it.
# BASE_IMAGE lets a build without registry access substitute a local base image.
ARG PYTHON=3.12
ARG BASE_IMAGE=public.ecr.aws/lambda/python:${PYTHON}
FROM ${BASE_IMAGE}

COPY requirements.txt ${LAMBDA_TASK_ROOT}/
RUN python -m pip install --no-cache-dir --disable-pip-version-check -r ${LAMBDA_TASK_ROOT}/requirements.txt

COPY modelfn ${LAMBDA_TASK_ROOT}/modelfn
COPY handlers ${LAMBDA_TASK_ROOT}/handlers
COPY functions ${LAMBDA_TASK_ROOT}/functions
# bytecode at build time: the image's file system is read-only at run time
RUN python -m compileall -q ${LAMBDA_TASK_ROOT}/modelfn ${LAMBDA_TASK_ROOT}/handlers

ENV MODELFN_FUNCTIONS_DIR=${LAMBDA_TASK_ROOT}/functions \
    MODELFN_CACHE_DIR=/tmp/modelfn \
    HOME=/tmp
CMD ["handlers.aws_lambda.handler"]
